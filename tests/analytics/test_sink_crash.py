"""SIGKILL the analytics process mid-batch, again and again, and restart it: every event
lands exactly once — in the raw tables and in the rollups.

The process is the real `python -m analytics` with its own chDB path. Each kill comes
while the sink is inserting a batch it has not committed yet (its status says so), the
worst moment: part of the batch may be in ClickHouse, none of its offsets are committed.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from schemas import topics
from tests.analytics.harness import AnalyticsProc, ClickHouse, analytics_env, caller, unique
from tests.analytics.traffic import expected, produce, store_queries, traffic, with_duplicates
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.slow  # an analytics process killed mid-batch and restarted: 35-55 s

KILLS = 2
MAX_KILLS = 4


def _status(proc: AnalyticsProc) -> dict[str, object]:
    return proc.get("/v1/admin/analytics/sink").json()  # type: ignore[no-any-return]


def _take_over(proc: AnalyticsProc) -> int:
    """Wait until the restarted sink has its partitions; returns the batches it found in
    doubt and inserted again (recovery happens when the group assigns them)."""
    def working() -> bool:
        status = _status(proc)
        return bool(status["batches"] or status["replayed_batches"])
    wait_until(working, 60, "the restarted sink to take over", proc)  # type: ignore[arg-type]
    return int(_status(proc)["replayed_batches"])  # type: ignore[call-overload]


def _kill_at(proc: AnalyticsProc, phases: tuple[str, ...], landed: int = 0,
            timeout: float = 30) -> str:
    """SIGKILL the process the moment its sink reports one of `phases` (and at least
    `landed` tables of the batch in ClickHouse); returns the phase."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=proc.url, headers=caller(admin=True)) as http:
        while time.monotonic() < deadline:
            assert proc.alive(), proc.log()[-3000:]
            try:
                status = http.get("/v1/admin/analytics/sink", timeout=2).json()
            except httpx.HTTPError:
                continue
            if (status.get("phase") in phases and status.get("batches", 0) >= 1
                    and status.get("tables_landed", 0) >= landed):
                proc.kill()
                return str(status["phase"])
    raise AssertionError(f"{proc.name} never reached {phases}:\n{proc.log()[-3000:]}")


def test_sigkill_mid_batch_loses_nothing_and_duplicates_nothing(
        bootstrap: str, clickhouse: ClickHouse) -> None:
    name = unique("crash")
    keys = tuple(f"key-{i}" for i in range(16))  # over every partition
    # Recent enough for a restarted sink to remember every id: the session's streams app
    # prices these usage events too (at its own price), and its ledger entries (same ids,
    # same partitions) must be dropped as repeats. So the test's own ledger entries go
    # first, acked before any usage event exists: the sink reads them before the copies.
    t = traffic(unique("crash"), 20_000, start=time.time() - 300, spacing_s=0.01, keys=keys)
    events = with_duplicates(t.events, every=50)
    asyncio.run(produce(bootstrap, [e for e in events if e[0] == topics.LEDGER]))
    asyncio.run(produce(bootstrap, [e for e in events if e[0] != topics.LEDGER]))
    env = analytics_env(clickhouse, name, bootstrap, batch_max_events="6000",
                        batch_max_wait_s="0.5")
    port = free_port()

    kills = replayed = 0
    run = 0
    killed_at: list[str] = []
    while True:
        run += 1
        proc = AnalyticsProc(f"{name}-{run}", env, port)
        proc.wait_ready()
        if run > 1:
            replayed += _take_over(proc)
        if kills >= MAX_KILLS or (kills >= KILLS and replayed >= 1):
            break
        if kills == 0:
            # A batch of several tables, some of them in ClickHouse, none committed.
            killed_at.append(_kill_at(proc, ("inserting",), landed=1))
        else:
            killed_at.append(_kill_at(proc, ("inserting", "committing")))
        kills += 1

    want = expected(t)
    queries = store_queries(t.tenant)

    def landed() -> bool:
        # Every stream has at least what was produced (more would be a duplicate: the
        # exact comparison below fails on it at once).
        return all(got >= wanted for name, sql in queries.items()
                   for got, wanted in zip(proc.sql(sql)[0], want[name], strict=True))

    def stored() -> dict[str, tuple[int, ...]]:
        return {name: tuple(proc.sql(sql)[0]) for name, sql in queries.items()}

    try:
        try:
            wait_until(landed, 240, "every event to land", proc)  # type: ignore[arg-type]
        except AssertionError as exc:  # say what is missing, and where it was killed
            raise AssertionError(f"{exc}; killed at {killed_at}; stored {stored()}, "
                                 f"want {want}") from None
        time.sleep(1.5)  # longer than a batch: nothing more may arrive
        assert stored() == want
        assert replayed >= 1, f"killed at {killed_at}, but no batch was left in doubt"
    finally:
        # SIGTERM: the sink lands and commits what it holds, and the process exits cleanly.
        code = proc.terminate(30)
    # uvicorn exits by the signal it stopped on, once the shutdown is complete.
    assert code in (0, -15), proc.log()[-3000:]
    assert "sink stopped: what it held is landed and committed" in proc.log()
