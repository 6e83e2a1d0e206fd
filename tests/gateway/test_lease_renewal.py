"""When a lease's renewal falls due while another round trip for the key is out.

The sweep keeps a busy key's slots alive with a round trip of its own, which does not
move the lease's expiry. A renewal that falls due while that trip is out must happen
after it, or the lease expires unrenewed and the key's next request waits for the
limiter. The scheduling is tested here on its own; the e2e test covers the round trips.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.keys import Principal
from gateway.leases import Lease, LeaseBook
from schemas.tiers import Budgets, Limits


def _book() -> tuple[LeaseBook, list[Lease]]:
    book = LeaseBook(None, None, "g", timeout=1.0, lease_ttl=10.0,  # type: ignore[arg-type]
                     max_requests=100)
    prefetched: list[Lease] = []

    def prefetch(principal: Principal, lease: Lease, tokens: int) -> None:
        prefetched.append(lease)

    book._prefetch = prefetch  # type: ignore[method-assign]
    return book, prefetched


def _expired_lease_in_use(book: LeaseBook) -> tuple[Principal, Lease]:
    principal = Principal("k", "t", False, Limits(), Budgets())
    now = time.time()
    lease = Lease(requests=3, tokens=300, slots=1, expires_at=now - 0.01, rate=1.0,
                  last_admit=now - 0.5)
    book.leases["k"] = lease
    return principal, lease


def _back(lease: Lease) -> None:
    """The other round trip ends as `LeaseBook` ends them: cleared, then resolved."""
    fetching, lease.fetching = lease.fetching, None
    assert fetching is not None
    fetching.set_result(None)


async def test_a_renewal_due_during_the_sweeps_round_trip_happens_after_it() -> None:
    book, prefetched = _book()
    principal, lease = _expired_lease_in_use(book)
    lease.fetching = asyncio.get_running_loop().create_future()  # the sweep's trip
    book._renew(principal, lease, 100)
    assert prefetched == []  # not two round trips at once for one key
    _back(lease)
    await asyncio.sleep(0)
    assert prefetched == [lease]


async def test_no_second_renewal_when_the_other_round_trip_armed_one() -> None:
    book, prefetched = _book()
    principal, lease = _expired_lease_in_use(book)
    loop = asyncio.get_running_loop()
    lease.fetching = loop.create_future()  # a top-up, whose grant arms the next renewal
    book._renew(principal, lease, 100)
    lease.expires_at = time.time() + 10
    book._renew_when_expired(principal, lease, 100)
    armed: Any = lease.renewal
    _back(lease)
    await asyncio.sleep(0)
    assert prefetched == [] and lease.renewal is armed
    book.close()


async def test_no_renewal_after_close() -> None:
    book, prefetched = _book()
    principal, lease = _expired_lease_in_use(book)
    lease.fetching = asyncio.get_running_loop().create_future()
    book._renew(principal, lease, 100)
    book.close()
    _back(lease)
    await asyncio.sleep(0)
    assert prefetched == []


async def test_a_key_that_slowed_after_a_quick_start_is_still_in_use() -> None:
    """Its smoothed rate still remembers the burst (3 a second) while it now sends one a
    second: an expiry 0.9 s after its last request renews the lease all the same."""
    book, prefetched = _book()
    principal, lease = _expired_lease_in_use(book)
    lease.rate, lease.gap, lease.last_admit = 3.0, 1.0, time.time() - 0.9
    book._renew(principal, lease, 100)
    assert prefetched == [lease]


async def test_a_key_gone_quiet_is_not_renewed() -> None:
    book, prefetched = _book()
    principal, lease = _expired_lease_in_use(book)
    lease.rate, lease.gap, lease.last_admit = 1.0, 1.0, time.time() - 5.0
    book._renew(principal, lease, 100)
    assert prefetched == []
