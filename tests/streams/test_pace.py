"""The streams app's fetch wait: short while lease requests come in, long otherwise."""

from __future__ import annotations

import time
from types import SimpleNamespace

from streams.transport import _Pace


def _pace(fetcher: SimpleNamespace) -> _Pace:
    app = SimpleNamespace(fetch_wait_ms=3, idle_fetch_wait_ms=20, busy_for_s=0.05,
                          busy_topics=frozenset({"sluice.leases"}))
    return _Pace(app, lambda: fetcher)  # type: ignore[arg-type]


def test_a_lease_request_shortens_the_wait_until_none_has_come_for_a_while() -> None:
    fetcher = SimpleNamespace(_fetch_max_wait_ms=20)
    pace = _pace(fetcher)
    assert pace.wait == 20
    pace.seen("sluice.usage")
    assert fetcher._fetch_max_wait_ms == 20
    pace.seen("sluice.leases")
    assert fetcher._fetch_max_wait_ms == 3
    pace.tick()
    assert fetcher._fetch_max_wait_ms == 3
    time.sleep(0.1)
    pace.tick()
    assert fetcher._fetch_max_wait_ms == 20


def test_a_wait_raised_for_slow_fetches_stays_raised_in_proportion() -> None:
    fetcher = SimpleNamespace(_fetch_max_wait_ms=80, _sluice_base_wait_ms=20)  # raised 4x
    _pace(fetcher).seen("sluice.leases")
    assert (fetcher._fetch_max_wait_ms, fetcher._sluice_base_wait_ms) == (12, 3)
