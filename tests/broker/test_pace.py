"""The streams app's fetch wait on the embedded broker: short while lease requests come
in, long otherwise; shortest, and narrowed to lease requests, while callers wait on them."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer.subscription_state import SubscriptionState

from broker.tansu import StreamsPace

LEASES = [TopicPartition("sluice.leases", p) for p in range(2)]
OTHERS = [TopicPartition("sluice.usage", 0), TopicPartition("sluice.prices", 0)]


def _pace(fetcher: SimpleNamespace, others_every_ms: int = 20) -> StreamsPace:
    return StreamsPace(3, 20, 1, others_every_ms / 1000, 0.05, frozenset({"sluice.leases"}),
                       lambda: fetcher)


def _assignment() -> Any:
    """aiokafka's own record of a consumer's partitions, as its fetcher keeps it, each
    read up to its end."""
    subscription = SubscriptionState()
    subscription.assign_from_user(set(LEASES + OTHERS))
    assignment = subscription.subscription.assignment
    for tp in assignment.tps:
        state = assignment.state_value(tp)
        state.reset_to(5)
        state.highwater = 5
    return assignment


def _paused(assignment: Any) -> set[TopicPartition]:
    return {tp for tp in assignment.tps if assignment.state_value(tp).paused}


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


def test_an_urgent_lease_request_shortens_the_wait_further_for_a_while() -> None:
    fetcher = SimpleNamespace(_fetch_max_wait_ms=20)
    pace = _pace(fetcher)
    pace.hurry()
    assert fetcher._fetch_max_wait_ms == 1
    pace.seen("sluice.leases")  # a request ahead of need meanwhile keeps it shortest
    assert fetcher._fetch_max_wait_ms == 1
    time.sleep(0.1)
    pace.seen("sluice.leases")  # no urgent one for a while: the busy wait
    assert fetcher._fetch_max_wait_ms == 3
    time.sleep(0.1)
    pace.tick()
    assert fetcher._fetch_max_wait_ms == 20


async def test_while_hurried_fetches_read_lease_requests_and_the_rest_now_and_then() -> None:
    pace, assignment = _pace(SimpleNamespace(_fetch_max_wait_ms=20)), _assignment()
    pace.after_fetch(assignment, {})
    assert not _paused(assignment)  # not hurried: every fetch reads every partition
    pace.hurry()
    pace.after_fetch(assignment, {})  # the others were just read: the next fetch skips them
    assert _paused(assignment) == set(OTHERS)
    await asyncio.sleep(0.03)  # past `others_every_s`: one fetch reads them all
    pace.after_fetch(assignment, {})
    assert not _paused(assignment)
    pace.after_fetch(assignment, {})
    assert _paused(assignment) == set(OTHERS)
    await asyncio.sleep(0.1)  # no urgent request for `busy_for_s`: back to reading everything
    pace.after_fetch(assignment, {})
    assert not _paused(assignment)


async def test_a_partition_is_paused_only_once_what_was_fetched_from_it_is_read() -> None:
    pace, assignment = _pace(SimpleNamespace(_fetch_max_wait_ms=20)), _assignment()
    pace.hurry()
    pace.after_fetch(assignment, {})  # the first fetch once hurried reads them all
    assert not _paused(assignment)
    pace.after_fetch(assignment, {OTHERS[0]: object()})  # its records not yet read
    assert _paused(assignment) == {OTHERS[1]}
    pace.after_fetch(assignment, {})
    assert _paused(assignment) == set(OTHERS)


async def test_a_partition_behind_its_end_is_read_on_until_caught_up() -> None:
    pace, assignment = _pace(SimpleNamespace(_fetch_max_wait_ms=20)), _assignment()
    behind = assignment.state_value(OTHERS[0])
    behind.highwater = 3000  # a backlog
    pace.hurry()
    pace.after_fetch(assignment, {})
    pace.after_fetch(assignment, {})
    assert _paused(assignment) == {OTHERS[1]}
    behind.consumed_to(3000)
    pace.after_fetch(assignment, {})
    assert _paused(assignment) == set(OTHERS)


async def test_no_narrowing_when_the_others_are_to_be_read_every_time() -> None:
    pace, assignment = _pace(SimpleNamespace(_fetch_max_wait_ms=20), others_every_ms=0), \
        _assignment()
    pace.hurry()
    for _ in range(3):
        pace.after_fetch(assignment, {})
        assert not _paused(assignment)
