"""The limiter's arithmetic: what leases add up to, whoever asks and however often."""

from __future__ import annotations

import random

from schemas.events import LeaseRequested
from schemas.tiers import TIER_LIMITS, Budget, Budgets, Limits
from streams.limiter import DAY, Account, periods

NOW = 1_800_000_000.0 + 30  # 30 s into a UTC minute
LEASE_TTL, SLOT_TTL = 2.0, 30.0
NO_BUDGETS = Budgets()


def ask(account: Account, limits: Limits, *, gateway: str = "g1", requests: int = 1,
        tokens: int = 10, slots: int = 0, held: int = 0, returned: int = 0,
        returned_tokens: int = 0, at: float = NOW, budgets: Budgets = NO_BUDGETS,
        tokens_min: int | None = None):  # type: ignore[no-untyped-def]
    req = LeaseRequested(key_id="k", tenant="t", gateway_id=gateway, reply_topic="r",
                         requests=requests, tokens=tokens,
                         tokens_min=tokens if tokens_min is None else tokens_min,
                         slots=slots, held_slots=held, returned_requests=returned,
                         returned_tokens=returned_tokens,
                         returned_at=NOW if (returned or returned_tokens) else 0.0,
                         limits=limits, budgets=budgets)
    grant, crossed = account.grant(req, at, LEASE_TTL, SLOT_TTL)
    return grant, crossed


def drain(account: Account, limits: Limits, requests: int, at: float = NOW) -> int:
    """Ask for `requests` lease after lease until they are granted or denied; the total."""
    granted = 0
    while granted < requests:
        grant, _ = ask(account, limits, requests=requests - granted, at=at)
        if not grant.requests:
            break
        granted += grant.requests
    return granted


def test_a_lease_takes_at_most_half_of_what_is_left() -> None:
    limits = Limits(requests_per_minute=0, requests_per_hour=1000, requests_per_day=1000,
                    tokens_per_minute=10**9, burst=40, concurrent=100)
    account = Account()
    sizes = [ask(account, limits, gateway="g1", requests=100)[0].requests for _ in range(3)]
    assert sizes == [20, 10, 5]
    assert ask(account, limits, gateway="g2", requests=100)[0].requests == 3


def test_requests_granted_never_exceed_the_burst_across_gateways() -> None:
    limits = Limits(requests_per_minute=0, requests_per_hour=1000, requests_per_day=1000,
                    tokens_per_minute=10**9, burst=50, concurrent=100)
    account, rng, granted = Account(), random.Random(7), 0
    for _ in range(500):
        grant, _ = ask(account, limits, gateway=f"g{rng.randrange(3)}",
                       requests=rng.randrange(1, 9))
        granted += grant.requests
        assert grant.requests == 0 or grant.denied is None
    assert granted == 50


def test_returned_requests_are_granted_again_but_never_twice() -> None:
    limits = Limits(requests_per_minute=0, requests_per_hour=100, requests_per_day=100,
                    tokens_per_minute=10**9, burst=10, concurrent=10)
    account = Account()
    assert drain(account, limits, 10) == 10
    # Gateway g1 used 6 and hands 4 back with its next request.
    again, _ = ask(account, limits, requests=10, returned=4)
    assert again.requests + drain(account, limits, 10) == 4
    denied, _ = ask(account, limits, gateway="g2")
    assert denied.denied == "rate_limit_exceeded" and denied.requests == 0
    assert denied.retry_after_s > 0


def test_bucket_refills_at_the_per_minute_rate() -> None:
    limits = TIER_LIMITS["free"]  # 10/min, burst 20
    account = Account()
    assert drain(account, limits, 25) == 20
    assert ask(account, limits, at=NOW + 1)[0].denied == "rate_limit_exceeded"
    assert drain(account, limits, 5, at=NOW + 12.01) == 2


def test_hour_and_day_windows() -> None:
    limits = Limits(requests_per_minute=10**6, requests_per_hour=3, requests_per_day=5,
                    tokens_per_minute=10**9, burst=10**6, concurrent=10)
    account = Account()
    assert drain(account, limits, 9) == 3
    hour_later = NOW + 3600
    assert drain(account, limits, 9, at=hour_later) == 2  # day: 5 total
    denied, _ = ask(account, limits, at=hour_later + 3600)
    assert denied.denied == "rate_limit_exceeded"
    assert ask(account, limits, at=NOW + DAY)[0].requests == 1


def test_tokens_are_reserved_and_refunded_to_the_true_count() -> None:
    limits = Limits(requests_per_minute=10**6, requests_per_hour=10**6,
                    requests_per_day=10**6, tokens_per_minute=1000, burst=10**6,
                    concurrent=10)
    account = Account()
    assert ask(account, limits, tokens=600)[0].tokens == 600
    denied, _ = ask(account, limits, tokens=600)
    assert denied.denied == "rate_limit_exceeded" and "Token" in (denied.message or "")
    account.refund(reserved=600, reserved_at=NOW, used=100, now=NOW + 1)
    assert ask(account, limits, tokens=600, at=NOW + 1)[0].tokens == 600
    # A refund for a past minute changes nothing in the current one.
    before = account.tokens_used
    account.refund(reserved=600, reserved_at=NOW - 60, used=0, now=NOW + 1)
    assert account.tokens_used == before


def test_concurrency_slots_across_gateways_and_their_expiry() -> None:
    limits = Limits(requests_per_minute=10**6, requests_per_hour=10**6,
                    requests_per_day=10**6, tokens_per_minute=10**9, burst=10**6,
                    concurrent=3)
    account = Account()
    assert ask(account, limits, gateway="g1", slots=1)[0].slots == 1
    assert ask(account, limits, gateway="g2", slots=1)[0].slots == 1
    assert ask(account, limits, gateway="g1", slots=1, held=1)[0].slots == 1
    full, _ = ask(account, limits, gateway="g2", slots=1, held=1)
    assert full.denied == "rate_limit_exceeded" and "concurrent" in (full.message or "")
    # g1 hands both of its slots back: g2 may take them.
    ask(account, limits, gateway="g1", requests=0, tokens=0, held=0)
    assert ask(account, limits, gateway="g2", slots=2, held=1)[0].slots == 2
    # A gateway that goes silent loses its slots after the slot TTL.
    later = NOW + SLOT_TTL + 1
    assert ask(account, limits, gateway="g3", slots=3, at=later)[0].slots == 3


def test_every_answer_says_how_many_slots_no_gateway_holds() -> None:
    limits = Limits(requests_per_minute=10**6, requests_per_hour=10**6,
                    requests_per_day=10**6, tokens_per_minute=10**9, burst=10**6,
                    concurrent=3)
    account = Account()
    assert ask(account, limits, gateway="g1", slots=1)[0].slots_free == 2
    assert ask(account, limits, gateway="g2", slots=2)[0].slots_free == 0
    denied, _ = ask(account, limits, gateway="g3", slots=1)
    assert denied.denied is not None and denied.slots_free == 0
    assert ask(account, limits, gateway="g2", requests=0, tokens=0, held=0)[0].slots_free == 2


def test_hard_quota_blocks_and_soft_alerts_once_per_period() -> None:
    limits = TIER_LIMITS["pro"]
    budgets = Budgets(daily_tokens=Budget(soft=100, hard=150))
    account = Account()
    day, month = periods(NOW)
    account.add_usage(day, month, 80, 40, 0, 0)  # 120 tokens: over soft
    grant, crossed = ask(account, limits, budgets=budgets)
    assert grant.denied is None and crossed == [("daily_tokens", 100, 120)]
    assert ask(account, limits, budgets=budgets)[1] == [], "alerted once"
    account.add_usage(day, month, 20, 10, 0, 0)  # 150: the hard level
    blocked, _ = ask(account, limits, budgets=budgets)
    assert blocked.denied == "insufficient_quota"
    assert 0 < blocked.retry_after_s <= DAY
    # The next day starts afresh.
    assert ask(account, limits, budgets=budgets, at=NOW + DAY)[0].denied is None


def test_replayed_events_are_skipped_by_offset_and_id() -> None:
    account = Account()
    assert not account.seen("usage:3", 10)
    account.mark("usage:3", 10)
    assert account.seen("usage:3", 10) and account.seen("usage:3", 9)
    assert not account.seen("usage:3", 11) and not account.seen("usage:4", 0)
    assert not account.duplicate("u1", "usage:3", 11)
    assert account.duplicate("u1", "usage:3", 12)
    assert not account.was_skipped("usage:3", 11) and account.was_skipped("usage:3", 12)
    restored = Account.load(account.dump())
    assert restored.seen("usage:3", 10) and restored.duplicate("u1", "usage:3", 13)
    # Long after the ids have moved on, a replay still knows which events it skipped.
    for i in range(200):
        assert not restored.duplicate(f"other-{i}", "usage:3", 14 + i)
    assert restored.was_skipped("usage:3", 12) and restored.was_skipped("usage:3", 13)
