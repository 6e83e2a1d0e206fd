"""While callers wait on lease grants, the streams app fetches lease requests alone at its
shortest wait and the other topics only now and then (`streams.transport._Pace`): usage
must still count meanwhile, a backlog included, and every urgent request be answered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from schemas import topics
from schemas.events import LeaseGranted, LeaseRequested, UsageRecorded
from schemas.tiers import TIER_LIMITS
from tests.conftest import broker_at
from tests.events import read_events
from tests.streams.conftest import StreamsApp, price_schedule, publish_async, unique

pytestmark = pytest.mark.slow  # a streams process through a 3,000-event backlog: 25-35 s

BACKLOG = 3000  # usage events of the test's key, in one partition


async def test_usage_counts_and_grants_go_out_while_callers_wait_on_leases(
        bootstrap: str, tmp_path: Path) -> None:
    model, key, tenant = unique("model"), unique("key"), unique("tenant")
    schedule = price_schedule(model, (time.time() - 3600, 1_000_000, 2_000_000, 500_000))
    reply = topics.TopicSpec(unique("sluice.replies.urgent"), 1)
    await broker_at(bootstrap).ensure([reply])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    asked: list[str] = []
    now = time.time()
    day = time.strftime("%Y-%m-%d", time.gmtime(now))

    def lease(i: int) -> LeaseRequested:
        return LeaseRequested(key_id=f"{key}-{i % 16}", tenant=tenant,
                              gateway_id="urgent-test", reply_topic=reply.name, requests=1,
                              tokens=1, slots=0, held_slots=0, urgent=True,
                              limits=TIER_LIMITS["enterprise"])

    def used(key_id: str) -> UsageRecorded:
        return UsageRecorded(ts=now, request_id=unique("req"), model=model, key_id=key_id,
                             tenant=tenant, worker_id="w1", status="completed",
                             prompt_tokens=10, completion_tokens=5, latency_ms=50.0)

    # What a new app finds on a busy stack: a long usage partition, one event a batch as
    # workers publish them. On a long enough one a 1 ms fetch comes back empty until the
    # wait is raised (`broker.tansu`), and a lagging partition paused between such
    # fetches was never read again: run after the other streams tests (their usage makes
    # the partitions longer still) this test failed so; `test_pace` checks the rule alone.
    for _ in range(BACKLOG):
        await producer.send_and_wait(topics.USAGE, used(key).encode(), key=key.encode())
    app = StreamsApp(bootstrap, tmp_path)
    done = asyncio.Event()

    async def ask() -> None:
        """An urgent lease request every few milliseconds, until the usage has counted."""
        while not done.is_set():
            req = lease(len(asked))
            await producer.send_and_wait(topics.LEASES, req.encode(), key=req.key_id.encode())
            asked.append(req.event_id)
            await asyncio.sleep(0.003)

    def counted() -> int:
        return int(app.totals("accounts", key).get(day, {}).get("requests", 0))

    asker = asyncio.create_task(ask())
    try:
        await asyncio.to_thread(app.start)
        await publish_async(bootstrap, topics.PRICES, [(model.encode(), schedule)])
        await asyncio.to_thread(app.wait_prices, schedule)
        for _ in range(20):
            await producer.send_and_wait(topics.USAGE, used(key).encode(), key=key.encode())
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(counted) < BACKLOG + 20:
            assert time.monotonic() < deadline, "usage did not count while hurried"
            assert not asker.done(), "the lease requests stopped"
            await asyncio.sleep(0.2)
        done.set()
        await asker

        def answered(events: list[object]) -> set[str]:
            return {e.lease_request_id for e in events if isinstance(e, LeaseGranted)}

        grants = await asyncio.to_thread(read_events, bootstrap, reply.name,
                                         lambda events: answered(events) >= set(asked), 30)
        assert answered(grants) == set(asked)
    finally:
        done.set()
        await asker
        await producer.stop()
        await asyncio.to_thread(app.stop)
