"""Reading events back from the broker, for assertions about what the stack published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import TopicPartition

from schemas.events import AnyEvent, decode


async def read_events_async(bootstrap: str, topic: str, want: Callable[[list[AnyEvent]], bool],
                timeout: float) -> list[AnyEvent]:
    from tests.conftest import broker_at

    consumer = broker_at(bootstrap).reader(50)
    await consumer.start()
    events: list[AnyEvent] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                events.extend(decode(r.value) for r in records if r.value)
            if want(events):
                break
    finally:
        await consumer.stop()
    return events


def read_events(bootstrap: str, topic: str, want: Callable[[list[AnyEvent]], bool],
                timeout: float = 15.0) -> list[AnyEvent]:
    """Everything on `topic` from the start, read until `want(events)` or the timeout."""
    return asyncio.run(read_events_async(bootstrap, topic, want, timeout))


def for_request(request_id: str) -> Callable[[list[AnyEvent]], bool]:
    return lambda events: any(getattr(e, "request_id", None) == request_id for e in events)


def matching(events: list[AnyEvent], request_id: str) -> list[AnyEvent]:
    return [e for e in events if getattr(e, "request_id", None) == request_id]
