"""Which workers are alive and what they serve, from their heartbeats on `sluice.workers`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from gateway.follow import Follower
from schemas import topics
from schemas.events import WorkerHeartbeat

log = logging.getLogger("sluice.gateway.workers")

# A worker counts as alive for this many heartbeat intervals after its last beat.
MISSED_BEATS = 3


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    task: str
    max_model_len: int
    capacity: int
    since: int


class WorkerRegistry(Follower):
    topic = topics.WORKERS

    def __init__(self, consumer: AIOKafkaConsumer, configured: list[str]) -> None:
        super().__init__(consumer)
        self._beats: dict[str, WorkerHeartbeat] = {}
        self._first_seen: dict[str, int] = {}
        self._tasks: dict[str, str] = {}
        self.configured = tuple(configured)

    def on_record(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:  # a tombstone
            self._beats.pop((key or b"").decode(), None)
            return
        try:
            beat = WorkerHeartbeat.model_validate_json(value)
        except ValidationError:
            log.warning("ignoring malformed heartbeat from %r", key)
            return
        if beat.status == "stopping":
            self._beats.pop(beat.worker_id, None)
            return
        self._beats[beat.worker_id] = beat
        for name in beat.models:
            self._first_seen.setdefault(name, int(beat.ts))
            self._tasks[name] = beat.task

    def live(self, model: str | None = None) -> list[WorkerHeartbeat]:
        now = time.time()
        return [
            b for b in self._beats.values()
            if now - b.ts < MISSED_BEATS * b.interval_s + 1
            and (model is None or model in b.models)
        ]

    def known(self, model: str) -> bool:
        """Configured here, or served by some worker at some point."""
        return model in self.configured or model in self._first_seen

    def task(self, model: str) -> str | None:
        """What `model`'s workers do ("generate" or "embed"), once one has said."""
        return self._tasks.get(model)

    def served(self) -> list[ServedModel]:
        by_name: dict[str, ServedModel] = {}
        for beat in self.live():
            for name in beat.models:
                prior = by_name.get(name)
                by_name[name] = ServedModel(
                    name=name,
                    task=beat.task,
                    max_model_len=beat.max_model_len,
                    capacity=beat.capacity + (prior.capacity if prior else 0),
                    since=self._first_seen.get(name, int(beat.ts)),
                )
        return sorted(by_name.values(), key=lambda m: m.name)

    def capacity(self, model: str) -> int:
        return sum(b.capacity for b in self.live(model))
