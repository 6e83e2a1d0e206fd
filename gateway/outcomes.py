"""How requests end: one RequestCompleted or RequestRejected each, plus the metrics.

Events are sent from tasks of their own, so that a request being torn down by a client
disconnect (where every await is cancelled) still reports how it ended.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaProducer

from gateway.metrics import Metrics
from schemas import topics
from schemas.events import Event, RequestCompleted, RequestRejected

log = logging.getLogger("sluice.gateway.outcomes")


class Outcomes:
    def __init__(self, producer: AIOKafkaProducer, metrics: Metrics) -> None:
        self._producer = producer
        self.metrics = metrics
        self._sending: set[asyncio.Task[None]] = set()

    def publish(self, topic: str, event: Event, key: str | None) -> None:
        """Send without waiting; `drain` waits for everything sent this way."""
        task = asyncio.get_running_loop().create_task(self._send(topic, event, key))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, topic: str, event: Event, key: str | None) -> None:
        try:
            await self._producer.send(topic, event.encode(), key=(key or "anonymous").encode())
        except Exception:
            log.exception("could not publish %s", event.__class__.__name__)

    def completed(self, event: RequestCompleted) -> None:
        m = self.metrics
        m.requests.labels(event.endpoint, event.model, str(event.status_code)).inc()
        m.latency.labels(event.endpoint, event.model).observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            m.ttft.labels(event.endpoint, event.model).observe(event.ttft_ms / 1000)
        m.tokens.labels(event.model, "prompt").inc(event.prompt_tokens)
        m.tokens.labels(event.model, "completion").inc(event.completion_tokens)
        self.publish(topics.REQUESTS, event, event.key_id)

    def rejected(self, event: RequestRejected) -> None:
        self.metrics.requests.labels(
            event.endpoint, event.model or "", str(event.status_code)
        ).inc()
        self.publish(topics.REQUESTS, event, event.key_id)

    async def drain(self, timeout: float = 5.0) -> None:
        if self._sending:
            await asyncio.wait(list(self._sending), timeout=timeout)


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
