"""While callers wait on lease grants, the streams app fetches lease requests alone at its
shortest wait and the other topics only now and then (`streams.transport._Pace`): usage
must still count meanwhile, and every urgent request still be answered."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer

from schemas import topics
from schemas.events import LeaseGranted, LeaseRequested, UsageRecorded
from schemas.tiers import TIER_LIMITS
from tests.events import read_events
from tests.streams.conftest import StreamsApp, price_schedule, publish_async, unique


async def test_usage_counts_and_grants_go_out_while_callers_wait_on_leases(
        streams_app: StreamsApp, bootstrap: str) -> None:
    model, key, tenant = unique("model"), unique("key"), unique("tenant")
    schedule = price_schedule(model, (time.time() - 3600, 1_000_000, 2_000_000, 500_000))
    await publish_async(bootstrap, topics.PRICES, [(model.encode(), schedule)])
    await asyncio.to_thread(streams_app.wait_prices, schedule)
    reply = topics.TopicSpec(unique("sluice.replies.urgent"), 1)
    await topics.ensure(bootstrap, [reply])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    asked: list[str] = []
    done = asyncio.Event()

    async def ask() -> None:
        """An urgent lease request every few milliseconds, until the usage has counted."""
        while not done.is_set():
            req = LeaseRequested(key_id=f"{key}-{len(asked) % 16}", tenant=tenant,
                                 gateway_id="urgent-test", reply_topic=reply.name,
                                 requests=1, tokens=1, slots=0, held_slots=0, urgent=True,
                                 limits=TIER_LIMITS["enterprise"])
            await producer.send_and_wait(topics.LEASES, req.encode(), key=req.key_id.encode())
            asked.append(req.event_id)
            await asyncio.sleep(0.003)

    def counted() -> int:
        return int(streams_app.totals("accounts", key).get(day, {}).get("requests", 0))

    asker = asyncio.create_task(ask())
    try:
        await asyncio.sleep(1.0)  # hurried by now
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        usage = [UsageRecorded(ts=now, request_id=unique("req"), model=model, key_id=key,
                               tenant=tenant, worker_id="w1", status="completed",
                               prompt_tokens=10, completion_tokens=5, latency_ms=50.0)
                 for _ in range(20)]
        for u in usage:
            await producer.send_and_wait(topics.USAGE, u.encode(), key=key.encode())
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(counted) < len(usage):
            assert time.monotonic() < deadline, "usage did not count while hurried"
            assert not asker.done(), "the lease requests stopped"
            await asyncio.sleep(0.1)
    finally:
        done.set()
        await asker
        await producer.stop()

    def answered(events: list[object]) -> set[str]:
        return {e.lease_request_id for e in events if isinstance(e, LeaseGranted)}

    grants = await asyncio.to_thread(read_events, bootstrap, reply.name,
                                     lambda events: answered(events) >= set(asked), 30)
    assert answered(grants) == set(asked)
