from __future__ import annotations

from inference.offsets import OffsetTracker


def test_commits_stop_below_the_oldest_running_request() -> None:
    t = OffsetTracker()
    for offset in (10, 11, 12):
        t.started("p0", offset)
    assert t.safe("p0") == 10
    t.finished("p0", 11)
    t.finished("p0", 12)
    assert t.safe("p0") == 10  # 10 still runs: a crash must redeliver it
    t.finished("p0", 10)
    assert t.safe("p0") == 13


def test_due_reports_only_what_moved() -> None:
    t = OffsetTracker()
    t.started("p0", 0)
    t.started("p1", 5)
    assert t.due() == {"p0": 0, "p1": 5}
    t.mark_committed(t.due())
    assert t.due() == {}
    t.finished("p1", 5)
    assert t.due() == {"p1": 6}


def test_forgotten_partitions_are_not_committed() -> None:
    t = OffsetTracker()
    t.started("p0", 3)
    t.forget(["p0"])
    t.finished("p0", 3)
    assert t.due() == {}
    assert t.safe("p0") is None
