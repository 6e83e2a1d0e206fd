"""`broker.tansu` on the real broker: a consumer with the hot path's short fetch wait
keeps receiving from a partition that the embedded broker cannot read within that wait."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import TopicPartition

from broker import PROFILES, Broker
from schemas import topics

pytestmark = pytest.mark.slow  # 10,000 single-record batches: 10 s


async def test_a_short_wait_still_receives_from_a_large_partition(bootstrap: str) -> None:
    broker = Broker(bootstrap, PROFILES["tansu"])
    topic = f"sluice.test.large-{uuid.uuid4().hex[:8]}"
    await broker.ensure([topics.TopicSpec(topic, 1)], fixed=False)
    tp = TopicPartition(topic, 0)
    producer = broker.producer()
    consumer = broker.reader(3)
    await producer.start()
    await consumer.start()
    try:
        # 10,000 batches: more than the broker reads within the wait.
        for _ in range(10_000):
            await producer.send_and_wait(topic, b"x" * 100)
        consumer.assign([tp])
        consumer.seek(tp, (await consumer.end_offsets([tp]))[tp])
        await producer.send_and_wait(topic, b"new")
        deadline = time.monotonic() + 20
        got: list[bytes] = []
        while b"new" not in got and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            got += [r.value or b"" for r in batch.get(tp, [])]
        assert b"new" in got, "the consumer stopped receiving"
    finally:
        await consumer.stop()
        await producer.stop()
        await asyncio.gather(broker.delete([topic]), return_exceptions=True)
