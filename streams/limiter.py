"""A key's budget and the leases cut from it. Pure logic: the Faust agents call it.

The limiter owns every key's budget. Gateways ask for leases: a number of requests, a
number of tokens and concurrency slots. A grant is debited at once, so however many
gateways hold leases, what they can admit together never exceeds the limits. What a
gateway does not use comes back with its next request; tokens reserved for a request
come back when the request's usage arrives.

- `requests_per_minute` refills a bucket holding at most `burst` requests.
- `requests_per_hour` and `requests_per_day` are fixed UTC windows.
- `tokens_per_minute` is a fixed UTC minute of reserved tokens, corrected by usage.
- `concurrent` slots are held per gateway until returned or, if the gateway goes
  silent, until they expire (`slot_ttl`), so a dead gateway cannot hold them forever.
  Each answer says how many no gateway holds (`slots_free`): unless that is more than
  half, gateways hand a slot back as soon as its request ends.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from schemas.events import LeaseGranted, LeaseRequested, RateSnapshot
from schemas.tiers import BUDGET_NAMES, USAGE_TOTALS, Limits

MINUTE, HOUR, DAY = 60, 3600, 86400
RECENT = 64


def window(ts: float, size: int) -> int:
    return int(ts // size * size)


@dataclass
class Holding:
    slots: int
    expires: float


@dataclass
class Account:
    """Everything the limiter keeps for one key (one value in the `accounts` table)."""

    bucket: float = -1.0  # -1: not started, the bucket starts full
    bucket_at: float = 0.0
    hour: int = 0
    hour_used: int = 0
    day: int = 0
    day_used: int = 0
    minute: int = 0
    tokens_used: int = 0
    holdings: dict[str, Holding] = field(default_factory=dict)
    # Source offsets already applied, per topic, so a replay after a crash is a no-op.
    applied: dict[str, int] = field(default_factory=dict)
    # Usage totals per UTC day and month: {"2026-11-22": {...}, "2026-11": {...}}.
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    alerted: list[str] = field(default_factory=list)
    # The last usage events billed, by a 64-bit digest of their ids: the account is written
    # once per batch, and the ids themselves made it several times as long.
    recent: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "source@offset" of recent duplicates

    @classmethod
    def load(cls, raw: dict[str, Any] | None) -> Account:
        """An account from its table value; it shares nothing with `raw`."""
        if not raw:
            return cls()
        raw = dict(raw)
        raw["holdings"] = {g: Holding(**h) for g, h in raw.get("holdings", {}).items()}
        raw["applied"] = dict(raw.get("applied", {}))
        raw["totals"] = {p: dict(t) for p, t in raw.get("totals", {}).items()}
        raw["alerted"] = list(raw.get("alerted", []))
        raw["recent"] = list(raw.get("recent", []))
        raw["skipped"] = list(raw.get("skipped", []))
        return cls(**raw)

    def dump(self) -> dict[str, Any]:
        """The table value; it shares nothing with the account. Like `dataclasses.asdict`,
        which costs several times as much (billing dumps an account per key and batch)."""
        raw = self.__dict__.copy()  # the numbers as they are, then copies of the containers
        raw["holdings"] = {g: h.__dict__.copy() for g, h in self.holdings.items()}
        raw["applied"] = dict(self.applied)
        raw["totals"] = {p: dict(t) for p, t in self.totals.items()}
        raw["alerted"] = list(self.alerted)
        raw["recent"] = list(self.recent)
        raw["skipped"] = list(self.skipped)
        return raw

    def seen(self, source: str, offset: int) -> bool:
        """Whether the event at `offset` of `source` was applied (then: skip it)."""
        return offset <= self.applied.get(source, -1)

    def mark(self, source: str, offset: int) -> None:
        self.applied[source] = offset

    # -- windows ----------------------------------------------------------------------------

    def roll(self, now: float, limits: Limits) -> None:
        """Bring every window and the bucket up to `now`."""
        burst = limits.burst or 0
        rate = (limits.requests_per_minute or 0) / MINUTE
        if self.bucket < 0:
            self.bucket = float(burst)
        else:
            self.bucket = min(float(burst), self.bucket + max(0.0, now - self.bucket_at) * rate)
        self.bucket_at = now
        if window(now, HOUR) != self.hour:
            self.hour, self.hour_used = window(now, HOUR), 0
        if window(now, DAY) != self.day:
            self.day, self.day_used = window(now, DAY), 0
        if window(now, MINUTE) != self.minute:
            self.minute, self.tokens_used = window(now, MINUTE), 0
        self.holdings = {g: h for g, h in self.holdings.items() if h.expires > now}

    def requests_available(self, limits: Limits) -> int:
        return max(0, min(
            math.floor(self.bucket + 1e-9),
            (limits.requests_per_hour or 0) - self.hour_used,
            (limits.requests_per_day or 0) - self.day_used,
        ))

    def requests_retry_after(self, now: float, limits: Limits) -> float:
        """Seconds until at least one more request could be granted."""
        waits = []
        if (limits.requests_per_day or 0) - self.day_used <= 0:
            waits.append(self.day + DAY - now)
        if (limits.requests_per_hour or 0) - self.hour_used <= 0:
            waits.append(self.hour + HOUR - now)
        rpm = limits.requests_per_minute or 0
        if self.bucket < 1:
            waits.append((1 - self.bucket) / (rpm / MINUTE) if rpm else DAY)
        return max(waits) if waits else 1.0

    def snapshot(self, now: float, limits: Limits) -> RateSnapshot:
        rpm, burst = limits.requests_per_minute or 0, limits.burst or 0
        tpm = limits.tokens_per_minute or 0
        refill = (burst - self.bucket) / (rpm / MINUTE) if rpm else 0.0
        return RateSnapshot(
            requests_limit=rpm,
            requests_remaining=self.requests_available(limits),
            requests_reset_s=round(max(0.0, refill), 3),
            tokens_limit=tpm,
            tokens_remaining=max(0, tpm - self.tokens_used),
            tokens_reset_s=round(self.minute + MINUTE - now, 3),
        )

    # -- leases -----------------------------------------------------------------------------

    def take_back(self, req: LeaseRequested) -> None:
        """Credit what the gateway did not use from its previous lease."""
        at = req.returned_at
        if req.returned_requests and at:
            n = req.returned_requests
            self.bucket = min(float(req.limits.burst or 0), self.bucket + n)
            if window(at, HOUR) == self.hour:
                self.hour_used = max(0, self.hour_used - n)
            if window(at, DAY) == self.day:
                self.day_used = max(0, self.day_used - n)
        if req.returned_tokens and at and window(at, MINUTE) == self.minute:
            self.tokens_used = max(0, self.tokens_used - req.returned_tokens)

    def grant(self, req: LeaseRequested, now: float, lease_ttl: float, slot_ttl: float
              ) -> tuple[LeaseGranted, list[tuple[str, int, int]]]:
        """Cut a lease for `req`; also returns the quota thresholds newly crossed."""
        limits = req.limits
        self.roll(now, limits)
        self.take_back(req)
        others = sum(h.slots for g, h in self.holdings.items() if g != req.gateway_id)
        self.holdings[req.gateway_id] = Holding(req.held_slots, now + slot_ttl)
        slots_free = max(0, (limits.concurrent or 0) - others - req.held_slots)

        def deny(code: str, message: str, retry: float) -> LeaseGranted:
            return LeaseGranted(
                lease_request_id=req.event_id, key_id=req.key_id, granted_at=now,
                expires_at=now, denied=code, message=message,  # type: ignore[arg-type]
                retry_after_s=round(max(0.0, retry), 3), snapshot=self.snapshot(now, limits),
                slots_free=slots_free)

        crossed, blocked = self.quota_state(req, now)
        if blocked and (req.requests or req.tokens or req.slots):
            return deny("insufficient_quota", blocked, self.period_end(blocked, now) - now), crossed
        # At most half of what is left (rounded up): when the budget runs short, one
        # replica asking first in a burst cannot take it all while the others wait.
        requests = min(req.requests, (self.requests_available(limits) + 1) // 2)
        if req.requests and not requests:
            return deny("rate_limit_exceeded",
                        "Request rate limit reached for this key.",
                        self.requests_retry_after(now, limits)), crossed
        tokens_free = max(0, (limits.tokens_per_minute or 0) - self.tokens_used)
        tokens = min(req.tokens, tokens_free)
        if req.tokens and tokens < req.tokens_min:
            return deny("rate_limit_exceeded",
                        "Token rate limit reached for this key.",
                        self.minute + MINUTE - now), crossed
        slots = min(req.slots, slots_free)
        if req.slots and not slots:
            return deny("rate_limit_exceeded",
                        "Too many concurrent requests for this key.", 1.0), crossed

        self.bucket -= requests
        self.hour_used += requests
        self.day_used += requests
        self.tokens_used += tokens
        self.holdings[req.gateway_id] = Holding(req.held_slots + slots, now + slot_ttl)
        expires = min(now + lease_ttl, self.minute + MINUTE)
        return LeaseGranted(
            lease_request_id=req.event_id, key_id=req.key_id, requests=requests, tokens=tokens,
            slots=slots, granted_at=now, expires_at=expires,
            snapshot=self.snapshot(now, limits), slots_free=slots_free - slots), crossed

    # -- usage ------------------------------------------------------------------------------

    def refund(self, reserved: int, reserved_at: float, used: int, now: float) -> None:
        """Replace a request's token reservation by what it really used, if the minute it
        was reserved in is still the current one (a past minute no longer limits)."""
        current = window(now, MINUTE)
        if reserved_at and self.minute == current == window(reserved_at, MINUTE):
            self.tokens_used = max(0, self.tokens_used - reserved + used)

    def duplicate(self, event_id: str, source: str, offset: int) -> bool:
        """Whether this usage event, new at `offset` of `source`, was billed already (a
        request run twice after a worker failed). Remembers the last few ids per key, which
        covers that window, and where the last few duplicates were (`skipped`): once ids
        have moved on, a replay after a crash must still skip the same events."""
        digest = hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()
        if digest in self.recent:
            self.skipped = [*self.skipped[-(RECENT - 1):], f"{source}@{offset}"]
            return True
        self.recent = [*self.recent[-(RECENT - 1):], digest]
        return False

    def was_skipped(self, source: str, offset: int) -> bool:
        """Whether the event at `offset` of `source` (applied already) was a duplicate."""
        return f"{source}@{offset}" in self.skipped

    def add_usage(self, day: str, month: str, tokens_in: int, tokens_out: int, cached: int,
                  cost: int) -> None:
        for period in (day, month):
            t = self.totals.setdefault(period, dict.fromkeys(USAGE_TOTALS, 0))
            t["requests"] += 1
            t["prompt_tokens"] += tokens_in
            t["completion_tokens"] += tokens_out
            t["cached_tokens"] += cached
            t["cost_micros"] += cost
        self.totals = recent(self.totals)

    # -- quotas and budgets -----------------------------------------------------------------

    def used(self, budget: str, now: float) -> int:
        day, month = periods(now)
        period = day if budget.startswith("daily") else month
        t = self.totals.get(period, {})
        if budget.endswith("tokens"):
            return t.get("prompt_tokens", 0) + t.get("completion_tokens", 0)
        return t.get("cost_micros", 0)

    def quota_state(self, req: LeaseRequested, now: float
                    ) -> tuple[list[tuple[str, int, int]], str | None]:
        """Soft thresholds crossed for the first time this period, and the first hard one hit."""
        crossed, blocked = [], None
        for name in BUDGET_NAMES:
            budget = getattr(req.budgets, name)
            used = self.used(name, now)
            tag = f"{name}:{periods(now)[0 if name.startswith('daily') else 1]}"
            if budget.soft is not None and used >= budget.soft and tag not in self.alerted:
                self.alerted = [*self.alerted[-15:], tag]
                crossed.append((name, budget.soft, used))
            if budget.hard is not None and used >= budget.hard and blocked is None:
                blocked = name
        return crossed, blocked

    def period_end(self, budget: str, now: float) -> float:
        t = dt.datetime.fromtimestamp(now, dt.UTC)
        if budget.startswith("daily"):
            return window(now, DAY) + DAY
        first = (t.replace(day=1) + dt.timedelta(days=32)).replace(day=1, hour=0, minute=0,
                                                                     second=0, microsecond=0)
        return first.timestamp()


def recent(totals: dict[str, Any]) -> dict[str, Any]:
    """The latest two days and two months of `totals` (keyed "2026-11-22" or "2026-11");
    older ones are in ClickHouse."""
    days = sorted(p for p in totals if len(p) == 10)[-2:]
    months = sorted(p for p in totals if len(p) == 7)[-2:]
    return {p: totals[p] for p in (*days, *months)}


def periods(ts: float) -> tuple[str, str]:
    """The UTC day and month of `ts`: `('2026-11-22', '2026-11')`."""
    return _periods(int(ts // DAY))


@functools.lru_cache(maxsize=64)
def _periods(day: int) -> tuple[str, str]:
    t = dt.datetime.fromtimestamp(day * DAY, dt.UTC)
    return t.strftime("%Y-%m-%d"), t.strftime("%Y-%m")
