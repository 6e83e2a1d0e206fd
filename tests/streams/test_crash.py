"""SIGKILL the streams worker while usage streams in, restart it, again: no total loses an
event and none counts one twice, per key and per tenant, per UTC day and month, and the
ledger has exactly one entry id per usage event.

What makes it hold: each account and tenant total remembers the last offset it applied
per source partition, in the same table value (one changelog record) as the totals, so
an event replayed after the crash is recognised; forwards and ledger entries are sent
again and dropped by offset or by id where they arrive. A restarted worker rebuilds its
tables from their changelogs, including the records of each changelog's last batch
(which Tansu's end offsets leave out, see streams/transport.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

from schemas import topics
from schemas.events import UsageRecorded
from tests.conftest import wait_until
from tests.streams.conftest import (
    StreamsApp,
    expected_totals,
    ledger_for,
    price_schedule,
    publish,
    publish_async,
    unique,
)

pytestmark = pytest.mark.slow  # a streams process killed and restarted twice: 40-50 s

EVENTS = 3000
RATE = 300.0  # usage events per second
KILLS_AT = (0.25, 0.6)  # of the events counted when each SIGKILL comes


def _stream(now: float, keys: dict[str, str], models: list[str]) -> list[UsageRecorded]:
    """`EVENTS` requests over the last hour, with every 50th delivered a second time a
    few requests later (a worker that died after publishing its usage)."""
    usage = []
    for i in range(EVENTS):
        key = list(keys)[(i * 7) % len(keys)]
        usage.append(UsageRecorded(
            ts=now - 3600 + i, request_id=unique("req"), model=models[i % len(models)],
            key_id=key,
            tenant=keys[key], worker_id="w1", status="completed", prompt_tokens=20 + i % 500,
            completion_tokens=1 + i % 97, cached_tokens=(i % 500) // 2 if i % 3 == 0 else 0,
            latency_ms=50.0))
    stream = []
    for i, u in enumerate(usage):
        stream.append(u)
        if i % 50 == 10:
            stream.append(usage[i - 6])
    return stream


def _settle(app: StreamsApp, want: dict[str, dict[str, dict[str, Counter[str]]]],
            quiet_s: float = 10, timeout: float = 180) -> None:
    """Until the totals are `want`, or have not changed for `quiet_s` (then the assertions
    that follow show what differs)."""
    deadline = time.monotonic() + timeout
    last, changed = None, time.monotonic()
    while time.monotonic() < deadline:
        now = {(kind, name, period): app.totals(kind, name).get(period, {}).get("requests")
               for kind, names in want.items() for name, periods in names.items()
               for period in periods}
        if all(now[k] == want[k[0]][k[1]][k[2]]["requests"] for k in now):
            time.sleep(1)  # a double count arriving late would show now
            return
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed > quiet_s:
            return
        time.sleep(0.5)


def _counted(app: StreamsApp, keys: list[str]) -> int:
    """Requests counted for `keys`, over every month: the hour of events spans two months
    when the test runs in the first hour of one."""
    return sum(totals.get("requests", 0) for k in keys
               for period, totals in app.totals("accounts", k).items() if len(period) == 7)


def test_sigkill_loses_nothing_and_counts_nothing_twice(bootstrap: str,
                                                         streams_app: StreamsApp) -> None:
    now = time.time()
    # Several prices at once: their changelog records share a batch, whose tail a
    # restarted worker must not lose (usage would then be billed at no price).
    schedules = {model: price_schedule(model, (now - 86400, 250_000 * n, 1_250_000 * n,
                                               125_000 * n))
                 for n, model in enumerate((unique("model") for _ in range(3)), 1)}
    publish(bootstrap, topics.PRICES, ((m.encode(), s) for m, s in schedules.items()))
    for schedule in schedules.values():
        streams_app.wait_prices(schedule)
    time.sleep(2)  # other streams apps on this broker learn the prices too

    tenants = [unique("tenant") for _ in range(3)]
    keys = {unique("key"): tenants[i % 3] for i in range(12)}  # over most partitions
    stream = _stream(now, keys, list(schedules))
    usage = list({u.event_id: u for u in stream}.values())
    want_keys = expected_totals(usage, schedules, "key_id")
    want_tenants = expected_totals(usage, schedules, "tenant")

    published = threading.Thread(target=lambda: asyncio.run(publish_async(
        bootstrap, topics.USAGE, (((u.key_id or "").encode(), u) for u in stream),
        pace_s=1 / RATE)))
    published.start()
    try:
        for share in KILLS_AT:
            # Kill while it is busy: events keep coming and it is part way through them.
            wait_until(lambda share=share: _counted(streams_app, list(keys))
                       >= share * len(usage), 120, f"{share:.0%} of the events", streams_app.proc)
            streams_app.kill()
            streams_app.start()
    finally:
        published.join()

    _settle(streams_app, {"accounts": want_keys, "tenants": want_tenants})

    for key, periods in want_keys.items():
        got = streams_app.totals("accounts", key)
        assert {p: Counter(got.get(p, {})) for p in periods} == periods, key
    for tenant, periods in want_tenants.items():
        got = streams_app.totals("tenants", tenant)
        assert {p: Counter(got.get(p, {})) for p in periods} == periods, tenant

    entries = ledger_for(bootstrap, {u.event_id for u in usage})
    assert {e.event_id for e in entries} == {f"ledger:{u.event_id}" for u in usage}
    first: dict[str, object] = {}
    for e in entries:
        assert first.setdefault(e.event_id, e) == e  # every copy of an entry is the same
