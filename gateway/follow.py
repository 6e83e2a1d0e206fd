"""Following a topic from its start: how the gateway keeps views of compacted topics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas.events import decode

log = logging.getLogger("sluice.gateway.follow")


class Follower:
    """Reads every partition of `topic` from the beginning, then keeps reading.

    Each record is decoded (`parse`: any event, unless a subclass narrows it) and given to
    `apply`; a tombstone or a record that does not parse is skipped. `caught_up` is set
    once everything that was on the topic at start has been applied, so a view can be
    complete before use.
    """

    topic: str

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._ends: dict[TopicPartition, int] = {}
        self.caught_up = asyncio.Event()

    def on_record(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            event = self.parse(value)
        except ValidationError:
            log.warning("skipping an unreadable record %r on %s", key, self.topic)
            return
        self.apply(event)

    def parse(self, value: bytes) -> Any:
        return decode(value)

    def apply(self, event: Any) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self.topic) or {0}
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._ends = await self._consumer.end_offsets(tps)
        if not any(self._ends.values()):
            self.caught_up.set()

    async def run(self) -> None:
        consumer = self._consumer
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    self.on_record(record.key, record.value)
            if not self.caught_up.is_set():
                positions = [await consumer.position(tp) for tp in self._ends]
                if all(pos >= end for pos, end in zip(positions, self._ends.values(),
                                                       strict=True)):
                    self.caught_up.set()

    async def stop(self) -> None:
        await self._consumer.stop()
