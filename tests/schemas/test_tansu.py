"""`schemas.tansu` on the real broker: a consumer with the hot path's short fetch wait
keeps receiving from a partition that the embedded broker cannot read within that wait."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import tansu, topics

pytestmark = pytest.mark.slow  # 10,000 single-record batches: 10 s


async def test_a_short_wait_still_receives_from_a_large_partition(bootstrap: str) -> None:
    tansu.install()
    topic = f"sluice.test.large-{uuid.uuid4().hex[:8]}"
    await topics.ensure(bootstrap, [topics.TopicSpec(topic, 1)], fixed=False)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=3)
    await producer.start()
    await consumer.start()
    try:
        # 10,000 batches: Tansu 0.6 takes about 5 ms to read this partition's tail.
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
        await asyncio.gather(topics.delete(bootstrap, [topic]), return_exceptions=True)
