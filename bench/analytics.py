"""Analytics: sink throughput and freshness into chDB, and report latency on 10M rows.

One process, like `sluice analytics`: it starts the embedded broker (Tansu), and then

1. **throughput** — publishes a backlog of realistic events (per request: the gateway's
   outcome, the worker's usage, the ledger entry, and for 5% a cache hit; 50 tenants,
   8 keys each, 4 models), starts the sink on it and times it from its first consumed
   record until every event is stored and committed;
2. **freshness** — with the sink caught up, publishes usage at a steady rate and polls
   ClickHouse; an event's freshness is the time from its publication to the first poll
   that sees it;
3. **queries** — `seed`s N usage rows (default 10M: with their requests, ledger entries
   and cache hits, about 31M raw rows) and times, through the HTTP API in-process, the
   usage export grouped by day and model for the biggest tenant over all 90 days, and that
   tenant's analytics summary.

Numbers go to docs/benchmarks.md. Run: `python -m bench.analytics [--rows N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from analytics import seed as seeding
from analytics.api import create_app
from analytics.settings import Settings
from analytics.sink import Sink
from analytics.warehouse import Warehouse
from bench.common import broker, cpu, percentile
from bench.report import write_section
from schemas import topics
from schemas.events import AnyEvent, CacheHit, LedgerEntry, RequestCompleted, UsageRecorded
from schemas.reporting import ANALYTICS, TENANT, TOKEN, USAGE_EXPORT

TARGET_EVENTS_PER_S = 20_000
TARGET_FRESHNESS_P95_S = 2.0
TARGET_IDLE_FRESHNESS_P95_S = 1.0
TARGET_EXPORT_MS = 200.0
TARGET_SUMMARY_MS = 300.0
IDLE_GAP_S = 2.0
MODELS = ("smollm2-135m-instruct", "llama-3.1-8b-instruct", "qwen2.5-7b-instruct",
          "mistral-7b-instruct")


def _requests(n: int, now: float, tenants: int = 50) -> list[tuple[str, AnyEvent]]:
    """Events for `n` requests over the last minutes, spread over tenants, keys, models."""
    out: list[tuple[str, AnyEvent]] = []
    for i in range(n):
        tenant = f"bench-{(i * 7919) % tenants:03d}"
        key, model = f"{tenant}-key-{i % 8}", MODELS[i % len(MODELS)]
        ts = now - 600 + (i % 600)
        prompt, completion = 50 + i % 400, 10 + i % 200
        usage = UsageRecorded(ts=ts, request_id=f"r{i}", model=model, key_id=key,
                              tenant=tenant, worker_id="w1", status="completed",
                              prompt_tokens=prompt, completion_tokens=completion,
                              ttft_ms=30.0 + i % 100, latency_ms=300.0 + i % 1000)
        out += [
            (topics.REQUESTS, RequestCompleted(
                ts=ts, request_id=f"r{i}", endpoint="/v1/chat/completions", model=model,
                key_id=key, tenant=tenant, prompt_tokens=prompt, completion_tokens=completion,
                ttft_ms=35.0 + i % 100, latency_ms=310.0 + i % 1000,
                cache="hit" if i % 20 == 0 else "miss")),
            (topics.USAGE, usage),
            (topics.LEDGER, LedgerEntry(
                event_id=f"ledger:{usage.event_id}", ts=ts, usage_event_id=usage.event_id,
                request_id=f"r{i}", key_id=key, tenant=tenant, model=model,
                status="completed", prompt_tokens=prompt, completion_tokens=completion,
                cached_tokens=0, price_version=1, input_micros=prompt // 5,
                output_micros=completion // 2, cached_micros=0,
                cost_micros=prompt // 5 + completion // 2, occurred_at=ts, day="", month="")),
        ]
        if i % 20 == 0:
            out.append((topics.CACHE, CacheHit(
                ts=ts, request_id=f"r{i}", cache_key=f"c{i % 500}", key_id=key, tenant=tenant,
                model=model, prompt_tokens=prompt, completion_tokens=completion)))
    return out


async def _publish(bootstrap: str, events: list[tuple[str, AnyEvent]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks=1,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        pending = []
        for topic, event in events:
            pending.append(await producer.send(topic, event.encode(),
                                               key=(getattr(event, "key_id", "") or "").encode()))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _until(done: Callable[[], bool], every: float = 0.005) -> None:
    while True:
        if done():
            return
        await asyncio.sleep(every)


async def throughput(settings: Settings, warehouse: Warehouse, requests: int
                     ) -> dict[str, Any]:
    events = _requests(requests, time.time())
    await _publish(settings.kafka_bootstrap, events)
    ready = asyncio.Event()
    ready.set()
    sink = Sink(settings, warehouse, ready)
    task = asyncio.create_task(sink.run())
    await _until(lambda: sink.stats.consumed > 0)
    started = time.monotonic()
    await _until(lambda: sum(sink.stats.stored.values()) + sink.stats.duplicates >= len(events))
    elapsed = time.monotonic() - started
    return {"events": len(events), "seconds": elapsed, "per_s": len(events) / elapsed,
            "batches": sink.stats.batches, "sink": sink, "task": task}


async def first_after_ready(settings: Settings, warehouse: Warehouse, n: int
                            ) -> list[tuple[float, float]]:
    """`n` times, a sink of a new group is started on the (nearly empty) topics: how long
    until it is consuming (what `/ready` and `sluice up` wait for), and then how long an
    event published at that moment takes to be visible."""
    ready = asyncio.Event()
    ready.set()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
    await producer.start()
    out = []
    try:
        for i in range(n):
            sink = Sink(settings.model_copy(update={"analytics_group": f"bench-first-{i}"}),
                        warehouse, ready)
            task = asyncio.create_task(sink.run())
            started = time.monotonic()
            await _until(lambda sink=sink: sink.stats.consuming)  # type: ignore[misc]
            consuming = time.monotonic()
            tenant = f"first-{i}-{int(time.time())}"
            await producer.send_and_wait(topics.USAGE, UsageRecorded(
                request_id=tenant, model=MODELS[0], key_id="k", tenant=tenant,
                worker_id="w1", status="completed", prompt_tokens=1, completion_tokens=1,
                latency_ms=1.0).encode(), key=b"k")
            sql, params = "SELECT count() FROM usage WHERE tenant = {t:String}", {"t": tenant}
            for _ in range(1200):  # polls every 50 ms, for a minute at most
                if (await warehouse.query(sql, params)).rows[0][0]:
                    break
                await asyncio.sleep(0.05)
            out.append((consuming - started, time.monotonic() - consuming))
            sink.stop()
            await task
    finally:
        await producer.stop()
    return out


async def freshness(settings: Settings, warehouse: Warehouse, rate: float, seconds: float
                    ) -> list[float]:
    tenant = f"fresh-{rate:g}-{int(time.time())}"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}

    async def publish() -> None:
        interval, i = 1.0 / rate, 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            request_id = f"{tenant}-{i}"
            event = UsageRecorded(request_id=request_id, model=MODELS[0], key_id="k",
                                  tenant=tenant, worker_id="w1", status="completed",
                                  prompt_tokens=10, completion_tokens=10, latency_ms=1.0)
            await producer.send(topics.USAGE, event.encode(), key=b"k")
            sent[request_id] = time.monotonic()
            i += 1
            await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
        published.set()

    published = asyncio.Event()

    async def poll() -> None:
        deadline = time.monotonic() + seconds + 10
        while time.monotonic() < deadline and not (published.is_set() and len(seen) == len(sent)):
            rows = (await warehouse.query(
                "SELECT request_id FROM usage WHERE tenant = {t:String}", {"t": tenant})).rows
            now = time.monotonic()
            for (request_id,) in rows:
                seen.setdefault(request_id, now)
            await asyncio.sleep(0.05)

    try:
        await asyncio.gather(publish(), poll())
    finally:
        await producer.stop()
    return [seen[r] - sent[r] for r in sent if r in seen]


def queries(settings: Settings, rows: int, runs: int) -> dict[str, Any]:
    """Seed `rows` usage rows, then time the export and the summary through the API."""
    from starlette.testclient import TestClient

    started = time.monotonic()
    with Warehouse(settings).writer() as client:
        seeding.seed(client, rows)
        merges_quiet(client)
        (biggest, count), = client.query(
            "SELECT tenant, count() AS n FROM usage WHERE tenant LIKE 'tenant-%' "
            "GROUP BY tenant ORDER BY n DESC LIMIT 1").result_rows
        total = client.query("SELECT count() FROM usage").result_rows[0][0]
        rollup_rows = client.query(
            "SELECT count() FROM rollup_hour WHERE tenant = {t:String}",
            parameters={"t": biggest}).result_rows[0][0]
    seeded_s = time.monotonic() - started
    headers = {TENANT: biggest, TOKEN: settings.internal_token}
    period = {"from": str(int(time.time()) - 91 * 86400), "to": str(int(time.time()) + 60)}
    timings: dict[str, list[float]] = {"export": [], "summary": []}
    with TestClient(create_app(settings.model_copy(update={"analytics_sink": False}))) as api:
        for i in range(runs + 1):
            for name, path, params in (
                    ("export", USAGE_EXPORT.path, {"format": "json", "group_by": "day,model"}),
                    ("summary", ANALYTICS.path, {})):
                t = time.perf_counter()
                r = api.get(path, params={**period, **params}, headers=headers)
                r.read()
                ms = (time.perf_counter() - t) * 1000
                assert r.status_code == 200, r.text
                if i:  # the first round warms the clients and the caches
                    timings[name].append(ms)
        export_rows = len(api.get(USAGE_EXPORT.path, headers=headers,
                                  params={**period, "group_by": "day,model"}).json()["data"])
    return {"seeded_rows": total, "seed_s": seeded_s, "tenant": biggest, "tenant_rows": count,
            "tenant_rollup_rows": rollup_rows, "export_rows": export_rows, **timings}


def merges_quiet(client: Any, timeout: float = 300) -> None:
    """Let background merges settle, as they have in a store that has been running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.query("SELECT count() FROM system.merges").result_rows[0][0]:
            return
        time.sleep(1)


async def run(args: argparse.Namespace) -> str:
    home = Path(tempfile.mkdtemp(prefix="sluice-bench-analytics-"))
    with broker("analytics-broker") as bootstrap:
        settings = Settings(clickhouse_url=f"chdb://{home / 'clickhouse'}",
                            kafka_bootstrap=bootstrap, analytics_group="bench",
                            internal_token="bench", session_timeout_ms=6000,
                            heartbeat_interval_ms=500)
        warehouse = Warehouse(settings)
        from analytics import migrations
        with warehouse.writer() as client:
            migrations.migrate(client)
        first = await first_after_ready(settings, warehouse, 3)
        print(f"first event after ready: {first}", flush=True)
        tp = await throughput(settings, warehouse, args.requests)
        print(f"throughput: {tp['events']} events in {tp['seconds']:.2f}s "
              f"= {tp['per_s']:.0f}/s", flush=True)
        fresh = await freshness(settings, warehouse, args.rate, args.seconds)
        print(f"freshness: p50 {statistics.median(fresh):.3f}s p95 {percentile(fresh, 0.95):.3f}s",
              flush=True)
        idle = await freshness(settings, warehouse, 1 / IDLE_GAP_S, args.idle_seconds)
        print(f"idle freshness: p50 {statistics.median(idle):.3f}s "
              f"p95 {percentile(idle, 0.95):.3f}s", flush=True)
        tp["sink"].stop()
        await tp["task"]
        warehouse.close()
        q = await asyncio.to_thread(queries, settings, args.rows, args.runs)
        print(f"queries: export p50 {statistics.median(q['export']):.1f} ms, "
              f"summary p50 {statistics.median(q['summary']):.1f} ms", flush=True)
    return _report(args, tp, fresh, q, idle, first)


def _report(args: argparse.Namespace, tp: dict[str, Any], fresh: list[float],
            q: dict[str, Any], idle: list[float], first: list[tuple[float, float]]) -> str:
    machine = cpu()
    p50, p95 = statistics.median(fresh), percentile(fresh, 0.95)
    idle50, idle95 = statistics.median(idle), percentile(idle, 0.95)
    joins = ", ".join(f"{j:.2f}" for j, _ in first)
    firsts = ", ".join(f"{v:.2f}" for _, v in first)
    ex50, ex_max = statistics.median(q["export"]), max(q["export"])
    su50, su_max = statistics.median(q["summary"]), max(q["summary"])
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        ("measure", "result", "target", "result / target"),
        (f"sink throughput ({tp['events']:,} events, {tp['batches']} batches)",
         f"{tp['per_s']:,.0f} events/s", f"≥ {TARGET_EVENTS_PER_S:,} events/s",
         f"{tp['per_s'] / TARGET_EVENTS_PER_S:.2f}x"),
        (f"freshness p50 ({len(fresh)} events at {args.rate}/s for {args.seconds:.0f} s)",
         f"{p50:.2f} s", "", ""),
        ("freshness p95", f"{p95:.2f} s", f"≤ {TARGET_FRESHNESS_P95_S:.0f} s",
         f"{p95 / TARGET_FRESHNESS_P95_S:.2f}x of the limit"),
        (f"idle freshness p50 ({len(idle)} events, one every {IDLE_GAP_S:g} s)",
         f"{idle50:.2f} s", "", ""),
        ("idle freshness p95", f"{idle95:.2f} s", f"≤ {TARGET_IDLE_FRESHNESS_P95_S:.0f} s",
         f"{idle95 / TARGET_IDLE_FRESHNESS_P95_S:.2f}x of the limit"),
        (f"a new sink: start → consuming (its `/ready`), {len(first)} runs",
         f"{joins} s", "", ""),
        ("then an event published at once → visible", f"{firsts} s",
         f"≤ {TARGET_IDLE_FRESHNESS_P95_S:.0f} s", ""),
        (f"usage export by day and model, one tenant, 90 days "
         f"(p50 / max of {len(q['export'])})", f"{ex50:.1f} / {ex_max:.1f} ms",
         f"≤ {TARGET_EXPORT_MS:.0f} ms", f"{ex50 / TARGET_EXPORT_MS:.2f}x of the limit"),
        (f"analytics summary, same tenant and period (p50 / max of {len(q['summary'])})",
         f"{su50:.1f} / {su_max:.1f} ms", f"≤ {TARGET_SUMMARY_MS:.0f} ms",
         f"{su50 / TARGET_SUMMARY_MS:.2f}x of the limit"),
    ]
    return f"""
Run {when} on {machine}, {os.cpu_count()} cores; embedded ClickHouse (chDB) through
clickhouse-connect, embedded broker (Tansu). The sink runs in-process, with its defaults
(batches of at most 50,000 events or 1 s, or whatever it holds once nothing more has come
for 0.1 s), exactly as in `sluice analytics`.

{_table(rows)}

The queries ran on {q['seeded_rows']:,} usage rows made by `sluice analytics seed --rows
{args.rows}` (with their requests, ledger entries and cache hits; seeding took
{q['seed_s']:.0f} s), timed through the HTTP API in-process, after background merges
settled. The tenant is the biggest, `{q['tenant']}`: {q['tenant_rows']:,} usage rows, which
the hourly rollup holds in {q['tenant_rollup_rows']:,} rows; the export has
{q['export_rows']} rows. Freshness is measured to the first 50 ms poll that sees the row,
so it includes up to 50 ms of polling.
"""


def _table(rows: list[tuple[str, ...]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000, help="usage rows to seed")
    p.add_argument("--requests", type=int, default=80_000,
                   help="requests in the throughput backlog (about 3.05 events each)")
    p.add_argument("--rate", type=int, default=200, help="freshness: events per second")
    p.add_argument("--seconds", type=float, default=20.0, help="freshness: how long")
    p.add_argument("--idle-seconds", type=float, default=40.0,
                   help="idle freshness: how long (one event every 2 s)")
    p.add_argument("--runs", type=int, default=20, help="timed runs of each query")
    p.add_argument("--no-write", action="store_true", help="print, don't write the docs")
    args = p.parse_args()
    text = asyncio.run(run(args))
    print(text)
    if not args.no_write:
        write_section("analytics", "Analytics: sink throughput, freshness, report latency",
                      text)


if __name__ == "__main__":
    main()
