"""Totals rebuilt from the ledger's per-day rows (`streams.restore`), kept as the app keeps
them."""

from __future__ import annotations

import datetime as dt

from streams import restore
from streams.limiter import recent


def test_since_is_the_start_of_the_previous_month() -> None:
    now = dt.datetime(2027, 1, 15, 12, tzinfo=dt.UTC).timestamp()
    assert restore.since(now) == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def test_days_and_months_per_key_and_tenant() -> None:
    rows = [["k1", "acme", "2026-11-30", 1, 10, 5, 0, 100],
            ["k1", "acme", "2026-12-01", 2, 20, 10, 4, 200],
            ["k1", "acme", "2026-12-02", 3, 30, 15, 0, 300],
            ["k2", "acme", "2026-12-02", 1, 1, 1, 1, 1]]
    keys, tenants = restore.periods(rows)
    total = lambda r, p, c, ca, cost: {  # noqa: E731
        "requests": r, "prompt_tokens": p, "completion_tokens": c, "cached_tokens": ca,
        "cost_micros": cost}
    # A key keeps its last two days and last two months, as Account.add_usage does.
    assert keys["k1"] == {"2026-12-01": total(2, 20, 10, 4, 200),
                          "2026-12-02": total(3, 30, 15, 0, 300),
                          "2026-11": total(1, 10, 5, 0, 100),
                          "2026-12": total(5, 50, 25, 4, 500)}
    assert keys["k2"] == {"2026-12-02": total(1, 1, 1, 1, 1), "2026-12": total(1, 1, 1, 1, 1)}
    # A tenant keeps its last two days and months too.
    assert list(tenants["acme"]) == ["2026-12-01", "2026-12-02", "2026-11", "2026-12"]
    assert tenants["acme"]["2026-12"] == total(6, 51, 26, 5, 501)
    assert tenants["acme"]["2026-12-02"] == total(4, 31, 16, 1, 301)


def test_the_month_is_kept_however_many_days_it_has_had() -> None:
    """Keeping the last six periods sorted as text dropped the month (it sorts before its
    days) from the sixth day on: a tenant's month totals then restarted with each batch."""
    totals = {f"2026-12-{d:02d}": {"requests": 1} for d in range(1, 11)}
    totals |= {"2026-11": {"requests": 30}, "2026-12": {"requests": 10}}
    assert list(recent(totals)) == ["2026-12-09", "2026-12-10", "2026-11", "2026-12"]
