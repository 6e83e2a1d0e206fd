"""The reply router on the real broker: every reply reaches its request when several
producers write one reply partition, and long after one partition's worth of replies.

On the embedded broker both fail without the router's care: a reply partition of some
thousands of batches stops answering fetches within the gateway's wait, and a record
written by one producer can become visible after a later one from another.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from broker import PROFILES, Broker
from broker.replies import Pending, ReplyRouter
from schemas import topics
from schemas.events import InferenceRequested, TokenChunk

PRODUCERS = 4
REQUESTS = 40
CHUNKS = 250  # 10,000 single-record batches in all


def _open(router: ReplyRouter, rid: str, *, urgent: bool = False) -> Pending:
    """Wait for replies to a request made for it, which names the reply topic."""
    request = InferenceRequested(request_id=rid, model="m", kind="completion", prompt="x",
                                 reply_topic="", deadline=0)
    sent, pending = router.open(rid, request, urgent=urgent)
    assert sent.reply_topic == pending.topic == router.topic
    return pending


@pytest.mark.slow  # 10,000 single-record batches from four producers: 8-16 s each
@pytest.mark.parametrize("urgent", [False, True], ids=["idle-wait", "busy-wait"])
async def test_every_reply_arrives_from_many_producers_across_topics(
        bootstrap: str, urgent: bool) -> None:
    gateway_id = f"replies-{uuid.uuid4().hex[:8]}"
    broker = Broker(bootstrap, PROFILES["tansu"])  # the gateway's own waits and rotation
    await broker.ensure([topics.replies(gateway_id)], fixed=False)
    router = broker.replies(gateway_id, grace_s=0.2)
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
            pendings = [_open(router, rid, urgent=urgent) for rid in rids]
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


async def test_the_router_fetches_with_the_short_wait_only_while_lease_grants_are_awaited(
        bootstrap: str) -> None:
    gateway_id = f"replies-{uuid.uuid4().hex[:8]}"
    broker = Broker(bootstrap, PROFILES["tansu"])
    router = ReplyRouter(broker.reader(20), broker, gateway_id, busy_wait_ms=1, busy_for_s=0.3)
    await router.start()
    loop = asyncio.create_task(router.run())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    fetcher = router._consumer._fetcher
    try:
        assert fetcher._fetch_max_wait_ms == 20  # idle
        _open(router, "stream")  # a streamed answer's chunks: the pace stays
        assert fetcher._fetch_max_wait_ms == 20
        pending = _open(router, "r1", urgent=True)  # a lease grant
        assert fetcher._fetch_max_wait_ms == 1
        chunk = TokenChunk(request_id="r1", worker_id="w", attempt="a", seq=0, final=True)
        await producer.send_and_wait(pending.topic, chunk.encode(), key=b"r1")
        assert (await pending.get(timeout=10)).final
        router.close("r1")
        await asyncio.sleep(0.1)
        assert fetcher._fetch_max_wait_ms == 1  # still busy: a request just ended
        for _ in range(50):  # the router looks between reads (at least once a second)
            if fetcher._fetch_max_wait_ms == 20:
                break
            await asyncio.sleep(0.1)
        assert fetcher._fetch_max_wait_ms == 20, "the router kept polling fast when idle"
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await producer.stop()
        await router.stop()
