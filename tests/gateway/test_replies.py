"""The reply router on the real broker: every reply reaches its request when several
producers write one reply partition, and long after one partition's worth of replies.

On the embedded broker both fail without the router's care: a reply partition of some
thousands of batches stops answering fetches within the gateway's wait, and a record
written by one producer can become visible after a later one from another.
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from gateway import bus
from gateway.replies import Pending, ReplyRouter
from gateway.settings import Settings
from schemas import topics
from schemas.events import TokenChunk

PRODUCERS = 4
REQUESTS = 40
CHUNKS = 250  # 10,000 single-record batches in all


async def test_every_reply_arrives_from_many_producers_across_topics(bootstrap: str) -> None:
    gateway_id = f"replies-{uuid.uuid4().hex[:8]}"
    await topics.ensure(bootstrap, [topics.replies(gateway_id)], fixed=False)
    router = ReplyRouter(bus.reader(bootstrap, Settings().kafka_fetch_wait_ms), bootstrap,
                         gateway_id, rotate_after=1000, grace_s=0.2)
    await router.start()
    loop = asyncio.create_task(router.run())
    producers = [AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
                 for _ in range(PRODUCERS)]
    for p in producers:
        await p.start()
    first_topic = router.topic
    try:
        async def send(producer: AIOKafkaProducer, chunks: list[tuple[str, str, int]]) -> None:
            for topic, rid, seq in chunks:  # one record a batch: nothing to coalesce
                chunk = TokenChunk(request_id=rid, worker_id="w", attempt="a", seq=seq,
                                   final=seq == CHUNKS - 1)
                await producer.send_and_wait(topic, chunk.encode(), key=rid.encode())

        async def collect(pending: Pending) -> list[int]:
            return [(await pending.get(timeout=20)).seq for _ in range(CHUNKS)]

        # Waves of requests, so later ones are opened on the topics rotated to; each
        # request's chunks come from every producer at once.
        results: list[list[int]] = []
        for wave in range(0, REQUESTS, 10):
            rids = [f"{gateway_id}-{i}" for i in range(wave, wave + 10)]
            pendings = [router.open(rid) for rid in rids]
            chunks = [(p.topic, rid, seq) for seq in range(CHUNKS)
                      for rid, p in zip(rids, pendings, strict=True)]
            collected = asyncio.gather(*(collect(p) for p in pendings))
            await asyncio.gather(*(send(p, chunks[n::PRODUCERS])
                                   for n, p in enumerate(producers)))
            results += await collected
            for rid in rids:
                router.close(rid)
        assert [sorted(r) for r in results] == [list(range(CHUNKS))] * REQUESTS
        assert router.topic != first_topic

        async def retired() -> bool:
            names = await _topics(bootstrap)
            return first_topic not in names and router.topic in names

        for _ in range(100):
            if await retired():
                break
            await asyncio.sleep(0.1)
        assert await retired(), "the drained reply topics were not deleted"
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        for p in producers:
            await p.stop()
        await router.stop()


async def _topics(bootstrap: str) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return set(await consumer.topics())
    finally:
        await consumer.stop()
