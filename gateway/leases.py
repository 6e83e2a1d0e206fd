"""Admission by leases: each key's budget, a slice at a time, from the streams limiter.

A request is admitted against the lease this gateway holds for its key: one request,
its token reservation and one concurrency slot, all taken locally without a round trip.
When the lease runs short, expires or was never fetched, the gateway asks the limiter
for another (one Kafka round trip; concurrent requests for the key share it). The lease
it asks for grows with the key's recent rate here, so a quiet key takes one request at a
time (exact) and a hot one takes enough to last the lease's life (fast). A key in use
gets its next lease fetched in the background, so its requests seldom wait for the round
trip at all: as soon as the current one runs short, and as soon as it expires (at the
end of its time to live or of the minute) while requests still come in.

Whatever a lease had left when it is replaced goes back with the next request. Slots
are asked for only by a request that needs one. When it ends, its slot is kept for the
key's next request here only while more than half the key's slots were unheld at the
limiter's last answer (a periodic sweep hands back idle ones); otherwise it is handed
back at once, before the client sees the end, so the next request through any gateway
finds it free.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from broker.replies import ReplyRouter
from gateway.exceptions import RateLimited, ServiceUnavailable
from gateway.keys import Principal
from schemas import topics
from schemas.events import LeaseGranted, LeaseRequested, RateSnapshot


@dataclass
class Lease:
    requests: int = 0
    tokens: int = 0
    slots: int = 0
    in_use: int = 0
    granted_at: float = 0.0
    expires_at: float = 0.0
    snapshot: RateSnapshot | None = None
    denial: LeaseGranted | None = None
    denied_until: float = 0.0
    rate: float = 0.0  # admissions per second here, smoothed
    gap: float = 0.0  # seconds between the last two admissions
    last_admit: float = 0.0
    last_renewal: float = 0.0
    slots_free: int | None = None  # the key's slots no gateway held, at the last answer
    waited: int = 0  # round trips a request of the key waited for, here
    ahead: int = 0  # round trips made in the background
    fetching: asyncio.Future[None] | None = field(default=None, repr=False)
    renewal: asyncio.TimerHandle | None = field(default=None, repr=False)

    def usable(self, now: float, tokens: int) -> bool:
        return (now < self.expires_at and self.requests >= 1 and self.tokens >= tokens
                and self.in_use < self.slots)

    def hands_back_slots(self, concurrent: int | None) -> bool:
        """Whether a slot its request no longer uses goes back to the limiter now: unless
        more than half the key's slots were unheld at the limiter's last answer, another
        gateway may soon want it (kept, it would be refused there)."""
        if self.slots <= self.in_use:
            return False
        return self.slots_free is None or 2 * self.slots_free <= (concurrent or 0)

    def runs_short(self, tokens: int) -> bool:
        """Whether another request of `tokens` would find this lease spent."""
        return self.requests < 1 or self.tokens < tokens

    def in_use_lately(self, now: float) -> bool:
        """Whether the key's requests still come in: the last one came within about two
        gaps, by its smoothed rate or by its latest gap, whichever is longer. The smoothed
        rate alone lags a key that slowed down after a quick start."""
        if self.rate <= 0:
            return False
        return now - self.last_admit <= RENEW_WITHIN_GAPS * max(1.0 / self.rate, self.gap)


@dataclass(frozen=True)
class Ask:
    """How much to ask the limiter for, and what of an expired lease to hand back."""

    requests: int
    tokens: int
    tokens_min: int  # the least grant that still serves the request that asks
    slots: int
    returned_requests: int = 0
    returned_tokens: int = 0
    returned_at: float = 0.0  # when what is handed back was granted

    @property
    def hands_back(self) -> bool:
        return bool(self.returned_requests or self.returned_tokens)


def what_to_ask(lease: Lease, tokens: int, now: float, *, lease_ttl: float,
                max_requests: int, slot: bool = True) -> Ask:
    """What `lease` needs to serve a request of `tokens` at `now` and, when it is out of
    requests, as many as the key's recent rate expects within a lease's life (at least
    one, at most `max_requests`). An expired lease keeps nothing: what it had goes back.
    A slot is asked for only with `slot` (a request waits for this answer): a fetch
    ahead of need taking one would keep it from another gateway's request."""
    expired = now >= lease.expires_at
    kept_requests, kept_tokens = (0, 0) if expired else (lease.requests, lease.tokens)
    wanted = max(1, min(max_requests, math.ceil(lease.rate * lease_ttl)))
    requests = wanted if kept_requests < 1 else 0
    # Tokens for every request the lease is to serve, at this one's size: topped up for
    # one request at a time, a lease whose requests grew would send each of them on a
    # round trip of its own.
    serves = requests or kept_requests
    need_tokens = max(0, tokens * max(1, serves) - kept_tokens)
    returned = (lease.requests, lease.tokens) if expired else (0, 0)
    return Ask(requests=requests, tokens=need_tokens,
               tokens_min=max(0, tokens - kept_tokens) if need_tokens else 0,
               slots=1 if slot and lease.in_use >= lease.slots else 0,
               returned_requests=returned[0], returned_tokens=returned[1],
               returned_at=lease.granted_at if any(returned) else 0.0)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `0.25s`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


def headers(lease: Lease | None, now: float) -> dict[str, str]:
    """The `x-ratelimit-*` headers from the last snapshot, aged to `now`."""
    if lease is None or lease.snapshot is None:
        return {}
    s, age = lease.snapshot, now - lease.granted_at
    return {
        "x-ratelimit-limit-requests": str(s.requests_limit),
        "x-ratelimit-remaining-requests": str(s.requests_remaining + lease.requests),
        "x-ratelimit-reset-requests": _duration(s.requests_reset_s - age),
        "x-ratelimit-limit-tokens": str(s.tokens_limit),
        "x-ratelimit-remaining-tokens": str(s.tokens_remaining + lease.tokens),
        "x-ratelimit-reset-tokens": _duration(s.tokens_reset_s - age),
    }


# Prefetch a key's next lease when it is expected to see this many requests within a
# lease's life: 0.5 means roughly one request per two lease lifetimes or more often.
PREFETCH_AT = 0.5
# An expiring lease is renewed in the background if the key's last request came within
# this many gaps (at its recent rate) of the expiry.
RENEW_WITHIN_GAPS = 2.0


class Admitted:
    """A request's hold on its key's budget; `release` gives the slot back."""

    def __init__(self, book: LeaseBook | None, principal: Principal, tokens: int, at: float,
                 headers: dict[str, str]) -> None:
        self._book = book
        self.principal = principal
        self.key_id = principal.key_id
        self.tokens = tokens
        self.reserved_at = at
        self.admitted_at = time.time()
        self.headers = headers
        self._handing_back: asyncio.Task[None] | None = None

    def release(self) -> None:
        if self._book is not None:
            self._handing_back = self._book.release(self.principal)
            self._book = None

    async def settled(self, timeout: float) -> None:
        """Once the slot `release` handed back is on the limiter's topic (if one was):
        a request that ends after this leaves its slot to whichever gateway asks next."""
        if self._handing_back is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._handing_back), timeout)


class LeaseBook:
    def __init__(self, producer: AIOKafkaProducer, replies: ReplyRouter, gateway_id: str,
                 *, timeout: float, lease_ttl: float, max_requests: int,
                 denial_cache_s: float = 0.5, slot_renew_s: float = 10.0,
                 round_trips: Counter | None = None) -> None:
        self._producer = producer
        self._replies = replies
        self._gateway_id = gateway_id
        self._timeout = timeout
        self._lease_ttl = lease_ttl
        self._max_requests = max_requests
        self._denial_cache_s = denial_cache_s
        self._slot_renew_s = slot_renew_s
        self._round_trips = round_trips
        self.leases: dict[str, Lease] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    def lease(self, key_id: str) -> Lease | None:
        return self.leases.get(key_id)

    async def admit(self, principal: Principal, tokens: int) -> Admitted:
        """Admit one request needing `tokens`, or raise RateLimited / ServiceUnavailable."""
        if principal.admin:
            return Admitted(None, principal, 0, time.time(), {})
        lease = self.leases.setdefault(principal.key_id, Lease())
        while True:
            now = time.time()
            if lease.usable(now, tokens):
                lease.requests -= 1
                lease.tokens -= tokens
                lease.in_use += 1
                elapsed = now - lease.last_admit if lease.last_admit else 1.0
                lease.rate = 0.8 * lease.rate + 0.2 / max(elapsed, 1e-3)
                lease.gap = elapsed
                lease.last_admit = now
                admitted = Admitted(self, principal, tokens, lease.granted_at,
                                    headers(lease, now))
                if lease.runs_short(tokens) and self._busy(lease):
                    self._prefetch(principal, lease, tokens)
                return admitted
            if lease.denied_until > now and lease.denial is not None:
                raise _rejection(lease.denial, lease, now)
            await self._refill(principal, lease, tokens, waited=True)

    def _busy(self, lease: Lease) -> bool:
        return lease.rate * self._lease_ttl >= PREFETCH_AT

    def _prefetch(self, principal: Principal, lease: Lease, tokens: int) -> None:
        """Fetch the next lease now, in the background, so that the key's next request
        finds one in hand instead of waiting a round trip. What it does not use goes back
        when the lease expires, as always."""
        if lease.fetching is not None:
            return
        task = asyncio.get_running_loop().create_task(
            self._refill(principal, lease, tokens, waited=False))
        self._background.add(task)
        task.add_done_callback(self._prefetched)

    def _renew_when_expired(self, principal: Principal, lease: Lease, tokens: int) -> None:
        """At the lease's expiry, fetch the next one if the key is still in use: otherwise
        its next request would find it expired and wait for the round trip."""
        if lease.renewal is not None:
            lease.renewal.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, lease.expires_at - time.time())
        lease.renewal = loop.call_at(loop.time() + delay, self._renew, principal, lease, tokens)

    def _renew(self, principal: Principal, lease: Lease, tokens: int) -> None:
        lease.renewal = None
        self._renew_now(principal, lease, tokens)

    def _renew_now(self, principal: Principal, lease: Lease, tokens: int) -> None:
        if self._closed or self.leases.get(principal.key_id) is not lease:
            return
        if lease.fetching is not None:
            # Another round trip is out: a top-up (its grant arms the next renewal) or the
            # sweep keeping slots alive (it does not move the expiry). Look again when it
            # is back, or the lease would expire unrenewed and the key's next request
            # wait for the limiter.
            def again(_: object) -> None:
                if lease.renewal is None:  # unless a top-up's grant has armed one
                    self._renew_now(principal, lease, tokens)

            lease.fetching.add_done_callback(again)
            return
        if time.time() < lease.expires_at:  # the two clocks drifted; not yet
            self._renew_when_expired(principal, lease, tokens)
        elif self._busy(lease) and lease.in_use_lately(time.time()):
            self._prefetch(principal, lease, tokens)

    def close(self) -> None:
        """Stop renewing and fetching in the background."""
        self._closed = True
        for lease in self.leases.values():
            if lease.renewal is not None:
                lease.renewal.cancel()
                lease.renewal = None
        for task in self._background:
            task.cancel()

    def _prefetched(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # a denial or timeout is kept on the lease or retried; not raised

    def release(self, principal: Principal) -> asyncio.Task[None] | None:
        """A request ended: its slot is free here, and handed back at once if the key has
        none left unheld (the task, done when the limiter's topic has it)."""
        lease = self.leases.get(principal.key_id)
        if lease is None or lease.in_use <= 0:
            return None
        lease.in_use -= 1
        if self._closed or not lease.hands_back_slots(principal.limits.concurrent):
            return None
        task = asyncio.get_running_loop().create_task(self._hand_back(principal, lease))
        self._background.add(task)
        task.add_done_callback(self._prefetched)
        return task

    async def _hand_back(self, principal: Principal, lease: Lease) -> None:
        if lease.fetching is not None:  # after the round trip that is out: in order
            await asyncio.shield(lease.fetching)
        if (self.leases.get(principal.key_id) is not lease
                or not lease.hands_back_slots(principal.limits.concurrent)):
            return
        lease.fetching = asyncio.get_running_loop().create_future()
        try:
            lease.slots = lease.in_use
            req = LeaseRequested(
                key_id=principal.key_id, tenant=principal.tenant, gateway_id=self._gateway_id,
                reply_topic=self._replies.topic, requests=0, tokens=0, slots=0,
                held_slots=lease.slots, limits=principal.limits, budgets=principal.budgets)
            # Acknowledged, not answered: the limiter reads its topic in order, so a later
            # request from any gateway finds the slot back.
            await (await self._producer.send(topics.LEASES, req.encode(),
                                             key=req.key_id.encode()))
        finally:
            lease.fetching.set_result(None)
            lease.fetching = None

    async def _refill(self, principal: Principal, lease: Lease, tokens: int, *,
                      waited: bool) -> None:
        if lease.fetching is not None:  # one round trip per key at a time; share it
            await asyncio.shield(lease.fetching)
            return
        lease.fetching = asyncio.get_running_loop().create_future()
        if waited:
            lease.waited += 1
        else:
            lease.ahead += 1
        if self._round_trips is not None:
            self._round_trips.labels("waited" if waited else "ahead").inc()
        try:
            await self._ask(principal, lease, tokens, urgent=waited)
        finally:
            fetching, lease.fetching = lease.fetching, None
            if not fetching.done():
                fetching.set_result(None)

    async def _ask(self, principal: Principal, lease: Lease, tokens: int, *,
                   urgent: bool) -> None:
        ask = what_to_ask(lease, tokens, time.time(), lease_ttl=self._lease_ttl,
                          max_requests=self._max_requests, slot=urgent)
        if ask.hands_back:  # what the expired lease had goes back with this request
            lease.requests = lease.tokens = 0
        req = LeaseRequested(
            key_id=principal.key_id, tenant=principal.tenant, gateway_id=self._gateway_id,
            reply_topic=self._replies.topic, requests=ask.requests, tokens=ask.tokens,
            tokens_min=ask.tokens_min, slots=ask.slots, held_slots=lease.slots,
            returned_requests=ask.returned_requests, returned_tokens=ask.returned_tokens,
            returned_at=ask.returned_at,
            urgent=urgent, limits=principal.limits, budgets=principal.budgets)
        grant = await self._round_trip(req)
        lease.snapshot, lease.slots_free = grant.snapshot, grant.slots_free
        if grant.denied:
            lease.denial = grant
            lease.denied_until = time.time() + min(grant.retry_after_s, self._denial_cache_s)
            lease.granted_at = grant.granted_at
            raise _rejection(grant, lease, time.time())
        lease.requests += grant.requests
        lease.tokens += grant.tokens
        lease.slots += grant.slots
        lease.granted_at, lease.expires_at = grant.granted_at, grant.expires_at
        lease.last_renewal = grant.granted_at
        lease.denial, lease.denied_until = None, 0.0
        if lease.requests or lease.tokens:
            self._renew_when_expired(principal, lease, tokens)

    async def _round_trip(self, req: LeaseRequested) -> LeaseGranted:
        req, pending = self._replies.open(req.event_id, req, urgent=True)
        try:
            await self._producer.send(topics.LEASES, req.encode(), key=req.key_id.encode())
            reply = await pending.get_event(timeout=self._timeout)
        except TimeoutError:
            raise ServiceUnavailable(
                "The rate limiter did not answer in time. Please retry shortly.",
                code="limiter_unavailable") from None
        finally:
            self._replies.close(req.event_id)
        assert isinstance(reply, LeaseGranted)
        return reply

    async def sweep(self, principal_of: dict[str, Principal]) -> None:
        """Hand back idle slots and keep held ones alive; called every few seconds."""
        now = time.time()
        for key_id, lease in list(self.leases.items()):
            principal = principal_of.get(key_id)
            if principal is None or lease.fetching is not None:
                continue
            idle = now - lease.last_admit > self._lease_ttl
            shrink = idle and lease.slots > lease.in_use
            renew = lease.in_use and now - lease.last_renewal > self._slot_renew_s
            stale = idle and now >= lease.expires_at and (lease.requests or lease.tokens)
            if not (shrink or renew or stale):
                continue
            held = lease.in_use if shrink else lease.slots
            req = LeaseRequested(
                key_id=key_id, tenant=principal.tenant, gateway_id=self._gateway_id,
                reply_topic=self._replies.topic, requests=0, tokens=0, slots=0,
                held_slots=held, returned_requests=lease.requests if stale else 0,
                returned_tokens=lease.tokens if stale else 0,
                returned_at=lease.granted_at if stale else 0.0,
                limits=principal.limits, budgets=principal.budgets)
            with contextlib.suppress(ServiceUnavailable):
                lease.fetching = asyncio.get_running_loop().create_future()
                try:
                    grant = await self._round_trip(req)
                finally:
                    lease.fetching.set_result(None)
                    lease.fetching = None
                lease.slots, lease.slots_free = held, grant.slots_free
                lease.last_renewal = grant.granted_at
                if stale:
                    lease.requests = lease.tokens = 0
            if lease.slots == 0 and lease.in_use == 0 and idle and not lease.requests:
                if lease.renewal is not None:
                    lease.renewal.cancel()
                del self.leases[key_id]


def _rejection(grant: LeaseGranted, lease: Lease, now: float) -> RateLimited:
    retry = max(1, math.ceil(grant.retry_after_s - (now - grant.granted_at)))
    return RateLimited(grant.message or "Rate limit reached.",
                       code=grant.denied or "rate_limit_exceeded",
                       retry_after=retry, headers=headers(lease, now))
