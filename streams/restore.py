"""Totals after a restart of the embedded stack, rebuilt from the ledger in ClickHouse.

The embedded broker forgets the changelogs the streams app keeps its tables in. When a new
one starts empty, `sluice up` gives the app the analytics process's address, and the app
reads back what the ledger billed per key and UTC day since the previous month began
(`schemas.reporting.BILLED_PATH`): each key's and tenant's day and month totals, hence
its quotas and spend, are then what they were for every entry that had landed. Rate-limit
windows depend on the wall clock and start afresh; A/B metrics are not rebuilt. On a Kafka
cluster the changelogs are the record and none of this runs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from schemas.tiers import USAGE_TOTALS
from streams.limiter import recent

Totals = dict[str, dict[str, int]]  # period ("2026-12-06" or "2026-12") -> totals


def since(now: float) -> dt.datetime:
    """The start of the previous UTC month: the oldest period an account keeps."""
    first = dt.datetime.fromtimestamp(now, dt.UTC).replace(day=1, hour=0, minute=0, second=0,
                                                           microsecond=0)
    return (first - dt.timedelta(days=1)).replace(day=1)


def periods(rows: list[list[Any]]) -> tuple[dict[str, Totals], dict[str, Totals]]:
    """Per key and per tenant, day and month totals from the ledger's rows of [key_id,
    tenant, day, requests, prompt, completion, cached, cost]; kept as the streams app
    keeps them: the last two days and months."""
    keys: dict[str, Totals] = {}
    tenants: dict[str, Totals] = {}
    for key_id, tenant, day, *amounts in rows:
        for owner, table in ((key_id or "anonymous", keys), (tenant, tenants)):
            if not owner:
                continue
            for period in (day, day[:7]):
                t = table.setdefault(owner, {}).setdefault(period, dict.fromkeys(USAGE_TOTALS, 0))
                for name, amount in zip(USAGE_TOTALS, amounts, strict=True):
                    t[name] += amount
    return ({k: recent(t) for k, t in keys.items()},
            {t: recent(totals) for t, totals in tenants.items()})
