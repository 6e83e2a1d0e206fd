"""The sink, in-process, from the real broker into ClickHouse: every stream lands and rolls
up, and nothing lands twice — not an event a producer published twice, not a batch the
sink inserted but never committed, not a whole topic read again by a new group."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from analytics.settings import Settings
from analytics.sink import SOURCES, Sink
from analytics.warehouse import Warehouse
from tests.analytics.harness import unique
from tests.analytics.traffic import expected, produce, store_queries, traffic, with_duplicates


@contextlib.asynccontextmanager
async def running(settings: Settings, group: str) -> AsyncIterator[Sink]:
    settings = settings.model_copy(update={"analytics_group": group, "batch_max_wait_s": 0.3})
    warehouse = Warehouse(settings)
    ready = asyncio.Event()
    ready.set()
    sink = Sink(settings, warehouse, ready)
    task = asyncio.create_task(sink.run())
    try:
        yield sink
    finally:
        sink.stop()
        await asyncio.wait_for(task, 30)
        warehouse.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def stored(warehouse: Warehouse, tenant: str) -> dict[str, Any]:
    """What ClickHouse holds for a tenant (see traffic.store_queries)."""
    out: dict[str, Any] = {}
    for name, sql in store_queries(tenant).items():
        out[name] = tuple(int(v) for v in (await warehouse.query(sql)).rows[0])
    return out


async def caught_up(bootstrap: str, group: str) -> bool:
    """Nothing on the four streams past what `group` has committed. (Read, not computed
    from end offsets: the embedded broker's end offsets can lag its last records.)"""
    offsets = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                               enable_auto_commit=False)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                              auto_offset_reset="earliest", fetch_max_wait_ms=50)
    await offsets.start()
    await reader.start()
    try:
        tps = [TopicPartition(t, p) for t in SOURCES
               for p in offsets.partitions_for_topic(t) or ()]
        reader.assign(tps)
        for tp in tps:
            committed = await offsets.committed(tp)
            if committed is None:
                await reader.seek_to_beginning(tp)
            else:
                reader.seek(tp, committed)
        for _ in range(2):
            if any((await reader.getmany(timeout_ms=300)).values()):
                return False
        return True
    finally:
        await reader.stop()
        await offsets.stop()


async def test_every_stream_lands_and_rolls_up(bootstrap: str, settings: Settings,
                                              warehouse: Warehouse) -> None:
    settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    t = traffic(unique("land"), 40, start=time.time() - 120, spacing_s=2)
    want = expected(t)
    async with running(settings, unique("g-land")):
        started = time.monotonic()
        await produce(bootstrap, t.events)
        await eventually(lambda: _matches(warehouse, t.tenant, want), 30, "every event to land")
        landed_in = time.monotonic() - started
    assert landed_in < 15
    (rejected,) = (await warehouse.query(
        "SELECT status, status_code, error_type, model, key_id FROM requests "
        "WHERE tenant = {t:String} AND event_type = 'request_rejected' LIMIT 1",
        {"t": t.tenant})).rows
    assert rejected == ("rejected", 429, "rate_limit_exceeded", "model-y", "key-b")
    (ledger,) = (await warehouse.query(
        "SELECT min(price_version), sum(cost_micros), min(event_id LIKE 'ledger:%') "
        "FROM ledger WHERE tenant = {t:String}", {"t": t.tenant})).rows
    assert ledger == (1, t.expected.cost_micros, 1)


async def test_light_traffic_lands_without_waiting_for_a_full_batch(
        bootstrap: str, settings: Settings, warehouse: Warehouse) -> None:
    """A batch that may wait 10 s still lands once nothing more comes for `batch_idle_s`;
    and the sink says it is consuming only once it holds its partitions."""
    settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    t = traffic(unique("light"), 1, start=time.time(), reject_every=0, hit_every=0)
    async with running(settings, unique("g-light")) as sink:
        sink.settings = sink.settings.model_copy(update={"batch_max_wait_s": 10.0})
        await eventually(lambda: _true(sink.stats.consuming), 30, "the sink to consume")
        await produce(bootstrap, t.events)
        await eventually(lambda: _matches(warehouse, t.tenant, expected(t)), 5,
                         "a lone request to land well before the batch's 10 s are up")
    assert not sink.stats.consuming


async def _true(value: bool) -> bool:
    return value


async def _matches(warehouse: Warehouse, tenant: str, want: dict[str, Any]) -> bool:
    return await stored(warehouse, tenant) == want


@pytest.mark.slow  # three sinks in turn, each waiting out its commits: 25 s
async def test_nothing_lands_twice(bootstrap: str, settings: Settings,
                                   warehouse: Warehouse) -> None:
    settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    t = traffic(unique("dup"), 60, start=time.time() - 100)
    want = expected(t)
    group = unique("g-dup")

    # Producers are at-least-once: every third event is published twice.
    async with running(settings, group) as sink:
        await produce(bootstrap, with_duplicates(t.events, every=3))
        await eventually(lambda: _matches(warehouse, t.tenant, want), 30, "the events to land")
        await eventually(lambda: caught_up(bootstrap, group), 30, "the commits")
        assert sink.stats.duplicates >= len(t.events) // 3

    # A sink that died after inserting a batch but before committing it: the batch's
    # offsets are uncommitted again. The next sink finds it in the journal and inserts it
    # again, which changes nothing.
    batch = await _rewind_last_batch(bootstrap, warehouse, group)
    async with running(settings, group) as sink:
        await eventually(lambda: caught_up(bootstrap, group), 40, "the recovery")
        assert sink.stats.replayed_batches == 1, batch
        assert await stored(warehouse, t.tenant) == want

    # A new group reads every topic from the start: the ids it has seen lately in
    # ClickHouse are dropped, so nothing is stored again.
    other = unique("g-again")
    async with running(settings, other) as sink:
        await eventually(lambda: caught_up(bootstrap, other), 60, "a second group to catch up")
        assert sink.stats.duplicates > 0
    assert await stored(warehouse, t.tenant) == want


async def _rewind_last_batch(bootstrap: str, warehouse: Warehouse, group: str) -> list[Any]:
    """Commit the offsets of `group`'s newest journaled batch back to where it started."""
    (ranges,) = (await warehouse.query(
        "SELECT ranges FROM sink_batches WHERE consumer_group = {g:String} "
        "ORDER BY created_at DESC LIMIT 1", {"g": group})).rows[0]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, session_timeout_ms=6000,
                                heartbeat_interval_ms=500)
    consumer.subscribe(list(SOURCES))
    await consumer.start()
    try:
        while not consumer.assignment():
            consumer.pause(*consumer.assignment())
            await consumer.getmany(timeout_ms=100)
        await consumer.commit({TopicPartition(r["topic"], r["partition"]): r["first"]
                               for r in ranges})
    finally:
        await consumer.stop()
    return list(ranges)
