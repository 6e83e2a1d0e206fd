"""Billing end to end: usage in, an exact ledger and exact totals out, and the example
billing consumer's invoices agree with both.

The streams app is the real `sluice streams` process; prices and usage are published
to their topics as the admin API and the workers publish them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter

import jsonschema
import pytest
from aiokafka import AIOKafkaProducer

from schemas import topics
from schemas.events import UsageRecorded
from tests.conftest import ROOT, wait_until
from tests.streams.conftest import (
    StreamsApp,
    expected_entry,
    expected_totals,
    ledger_for,
    price_schedule,
    publish,
    publish_usage,
    unique,
)

# Each starts a streams process of its own and reads its ledger back, 4,000 events in the
# second: 15-45 s a test on two shared cores, too long for `make test-fast`.
pytestmark = pytest.mark.slow

SCHEMA = json.loads((ROOT / "docs" / "ledger.schema.json").read_text())


def _usage(now: float, keys: dict[str, str], models: list[str]) -> list[UsageRecorded]:
    """60 requests over the last 20 minutes, across keys, tenants and models, with token
    counts that make every rounding case (below, at and above half a micro-dollar)."""
    out = []
    for i in range(60):
        key = list(keys)[i % len(keys)]
        prompt = 3 + 37 * i
        out.append(UsageRecorded(
            ts=now - 1200 + 20 * i, request_id=unique("req"), model=models[i % len(models)],
            key_id=key, tenant=keys[key], worker_id="w1",
            status="completed" if i % 7 else "cancelled", prompt_tokens=prompt,
            completion_tokens=1 + 13 * i, cached_tokens=prompt // 3 if i % 4 == 0 else 0,
            latency_ms=100.0))
    return out


def _wait_for_totals(app: StreamsApp, want: dict[str, dict[str, Counter[str]]],
                     kind: str) -> None:
    def counted() -> bool:
        return all(
            app.totals(kind, name).get(period, {}).get("requests") == totals["requests"]
            for name, periods in want.items() for period, totals in periods.items())
    wait_until(counted, 60, f"{kind} totals to count every event", app.proc)


def test_usage_is_billed_once_exactly_and_invoiced(bootstrap: str,
                                                   streams_app: StreamsApp) -> None:
    now = time.time()
    small, large = unique("small"), unique("large")
    schedules = {
        # The small model's price changes 10 minutes ago: events before and after.
        small: price_schedule(small, (now - 7200, 150_000, 600_000, 75_000),
                              (now - 600, 250_000, 1_000_000, 125_000)),
        large: price_schedule(large, (now - 7200, 3_000_000, 15_000_000, 1_500_000)),
    }
    publish(bootstrap, topics.PRICES, ((m.encode(), s) for m, s in schedules.items()))
    for schedule in schedules.values():
        streams_app.wait_prices(schedule)
    # Other tests' streams apps on this broker bill these events too; give them as long
    # to learn the prices, so that their copies of the entries are the same.
    time.sleep(2)

    acme, globex = unique("acme"), unique("globex")
    keys = {unique("key"): acme, unique("key"): acme, unique("key"): globex}
    usage = _usage(now, keys, [small, small, large])
    # A crashed worker's usage delivered again (same event ids), some right away, some
    # after other events.
    again = usage[5:20:3] + usage[40:43]
    publish_usage(bootstrap, usage[:30] + usage[5:8] + usage[30:] + again)

    want_keys = expected_totals(usage, schedules, "key_id")
    want_tenants = expected_totals(usage, schedules, "tenant")
    _wait_for_totals(streams_app, want_keys, "accounts")
    _wait_for_totals(streams_app, want_tenants, "tenants")
    time.sleep(1)  # a duplicate counted late would show now

    # Totals: per key and per tenant, per UTC day and month, to the micro-dollar.
    for key, periods in want_keys.items():
        got = streams_app.totals("accounts", key)
        assert {p: Counter(got[p]) for p in periods} == periods, key
    for tenant, periods in want_tenants.items():
        got = streams_app.totals("tenants", tenant)
        assert {p: Counter(got[p]) for p in periods} == periods, tenant

    # The ledger: one entry id per usage event, every copy the same, amounts exact.
    entries = ledger_for(bootstrap, {u.event_id for u in usage})
    by_id: dict[str, list[dict[str, object]]] = {}
    for entry in entries:
        by_id.setdefault(entry.event_id, []).append(entry.model_dump(mode="json"))
    assert set(by_id) == {f"ledger:{u.event_id}" for u in usage}
    for copies in by_id.values():
        assert all(copy == copies[0] for copy in copies)
    for u in usage:
        entry = by_id[f"ledger:{u.event_id}"][0]
        want = expected_entry(u, schedules[u.model])
        assert {k: entry[k] for k in want} == want
        assert entry["occurred_at"] == entry["ts"] == u.ts
        assert entry["status"] == u.status
        jsonschema.validate(entry, SCHEMA)
    versions = Counter(by_id[f"ledger:{u.event_id}"][0]["price_version"]
                       for u in usage if u.model == small)
    assert versions.keys() == {1, 2}

    # The example consumer, as a billing team would run it.
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "billing_consumer.py"), "--bootstrap",
         bootstrap, "--json", "--tenant", acme, "--tenant", globex],
        capture_output=True, text=True, timeout=120, check=True)
    invoices = json.loads(run.stdout)["tenants"]
    assert invoices.keys() == {acme, globex}
    for tenant, invoice in invoices.items():
        mine = [u for u in usage if u.tenant == tenant]
        costs = {f"ledger:{u.event_id}": expected_entry(u, schedules[u.model])["cost_micros"]
                 for u in mine}
        assert invoice["requests"] == len(mine)
        assert invoice["cost_micros"] == sum(costs.values())
        for model, line in invoice["models"].items():
            lines = [u for u in mine if u.model == model]
            assert line["requests"] == len(lines)
            assert line["prompt_tokens"] == sum(u.prompt_tokens for u in lines)
            assert line["completion_tokens"] == sum(u.completion_tokens for u in lines)
            assert line["cost_micros"] == sum(costs[f"ledger:{u.event_id}"] for u in lines)
        total_micros = sum(t["cost_micros"] for t in want_tenants[tenant].values()) // 2
        assert invoice["cost_micros"] == total_micros  # the day and month totals, once


def test_usage_from_several_workers_at_once_is_all_counted(bootstrap: str,
                                                           streams_app: StreamsApp) -> None:
    """Four workers publishing one key's usage at the same moment, into one partition. On
    the embedded broker a record can then show after a later one, and a consumer that
    read past it lost the event for good (`broker.tansu`)."""
    now = time.time()
    model = unique("model")
    schedule = price_schedule(model, (now - 3600, 1_000_000, 2_000_000, 500_000))
    publish(bootstrap, topics.PRICES, [(model.encode(), schedule)])
    streams_app.wait_prices(schedule)
    key, tenant = unique("key"), unique("tenant")
    usage = [UsageRecorded(ts=now, request_id=unique("req"), model=model, key_id=key,
                           tenant=tenant, worker_id=f"w{i % 4}", status="completed",
                           prompt_tokens=1 + i % 5, completion_tokens=2, latency_ms=10.0)
             for i in range(4000)]

    async def workers() -> None:
        producers = [AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
                     for _ in range(4)]
        for p in producers:
            await p.start()

        async def worker(n: int) -> None:
            for u in usage[n::4]:  # one event a batch, as a worker at concurrency 1 sends
                await producers[n].send_and_wait(topics.USAGE, u.encode(),
                                                 key=key.encode())
                await asyncio.sleep(0.001)  # the pace the app keeps up with: it reads at the tail
        try:
            await asyncio.gather(*(worker(n) for n in range(4)))
        finally:
            for p in producers:
                await p.stop()

    asyncio.run(workers())
    want = expected_totals(usage, {model: schedule}, "key_id")[key]
    _wait_for_totals(streams_app, {key: want}, "accounts")
    got = streams_app.totals("accounts", key)
    assert {p: Counter(got[p]) for p in want} == want
