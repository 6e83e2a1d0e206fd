"""How big a lease a gateway asks the limiter for (`leases.what_to_ask`)."""

from __future__ import annotations

from typing import Any

from gateway.leases import Ask, Lease, what_to_ask

NOW = 1000.0
TTL = 10.0
MAX = 64


def ask(lease: Lease, tokens: int = 100) -> Ask:
    return what_to_ask(lease, tokens, NOW, lease_ttl=TTL, max_requests=MAX)


def live(**fields: Any) -> Lease:
    """A lease granted a second ago that lasts the rest of its life."""
    return Lease(granted_at=NOW - 1, expires_at=NOW - 1 + TTL, **fields)


def test_a_quiet_key_asks_for_one_request_and_its_tokens() -> None:
    assert ask(Lease()) == Ask(requests=1, tokens=100, tokens_min=100, slots=1)
    assert ask(live(rate=0.01)).requests == 1


def test_a_hot_key_asks_for_its_rate_over_a_lease_life_capped() -> None:
    assert ask(live(rate=2.3)).requests == 23
    assert ask(live(rate=50.0)).requests == MAX


def test_an_expired_lease_hands_back_what_it_had_and_asks_afresh() -> None:
    lease = Lease(requests=3, tokens=250, slots=1, granted_at=NOW - 20, expires_at=NOW - 10)
    # Its slot is not part of the lease's life: still held, and not in use.
    assert ask(lease) == Ask(requests=1, tokens=100, tokens_min=100, slots=0,
                             returned_requests=3, returned_tokens=250, returned_at=NOW - 20)


def test_a_live_lease_hands_nothing_back() -> None:
    a = ask(live(requests=0, tokens=30, slots=1))
    assert (a.returned_requests, a.returned_tokens, a.returned_at) == (0, 0, 0.0)
    assert not a.hands_back


def test_tokens_cover_every_request_served_at_this_requests_size() -> None:
    # Out of requests: five more at this rate, 100 tokens each, less the 30 in hand.
    assert ask(live(rate=0.5, tokens=30)) == Ask(requests=5, tokens=470, tokens_min=70,
                                                 slots=1)
    # Requests in hand but short of tokens: enough for the four it has left.
    a = ask(live(requests=4, tokens=150))
    assert (a.requests, a.tokens) == (0, 250)


def test_the_least_acceptable_grant_is_what_this_request_lacks() -> None:
    assert ask(live(requests=4, tokens=150)).tokens_min == 0  # this one fits already
    assert ask(live(requests=4, tokens=40)).tokens_min == 60


def test_no_tokens_asked_when_the_lease_has_enough() -> None:
    a = ask(live(rate=0.5, tokens=10_000))
    assert (a.requests, a.tokens, a.tokens_min) == (5, 0, 0)


def test_a_slot_only_when_every_held_slot_is_in_use() -> None:
    assert ask(live(slots=0, in_use=0)).slots == 1
    assert ask(live(slots=2, in_use=1)).slots == 0
    assert ask(live(slots=2, in_use=2)).slots == 1


def test_only_a_request_waiting_for_it_asks_for_a_slot() -> None:
    assert ask(live(slots=1, in_use=1)).slots == 1
    fetch_ahead = what_to_ask(live(slots=1, in_use=1), 100, NOW, lease_ttl=TTL,
                              max_requests=MAX, slot=False)
    assert fetch_ahead.slots == 0


def test_a_finished_requests_slot_is_kept_only_while_most_are_unheld() -> None:
    assert live(slots=1, in_use=0, slots_free=6).hands_back_slots(10) is False
    assert live(slots=1, in_use=0, slots_free=5).hands_back_slots(10) is True
    assert live(slots=1, in_use=0, slots_free=1).hands_back_slots(2) is True
    assert live(slots=2, in_use=2, slots_free=0).hands_back_slots(2) is False  # none idle
    assert live(slots=1, in_use=0, slots_free=None).hands_back_slots(100) is True
