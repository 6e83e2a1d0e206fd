"""Pricing: a usage event and the price in force when it happened make a ledger entry."""

from __future__ import annotations

from schemas.events import LedgerEntry, PriceSchedule, UsageRecorded
from streams.limiter import periods

MILLION = 1_000_000


def _cost(tokens: int, micros_per_million: int) -> int:
    """Integer micro-dollars, rounded half up, so sums of entries are exact integers."""
    return (tokens * micros_per_million + MILLION // 2) // MILLION


def price(usage: UsageRecorded, schedule: PriceSchedule | None) -> LedgerEntry:
    """The ledger entry for `usage`. Cached prompt tokens are billed at the cached rate, an
    answer from the response cache at the cache-hit rate.

    The entry is a function of the usage event and the schedule only (even its `ts` is
    the usage's), so pricing an event again after a crash sends the very same entry.
    """
    version = schedule.at(usage.ts) if schedule is not None else None
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    fresh = usage.prompt_tokens - cached
    if version is None:
        input_micros = output_micros = cached_micros = hit_micros = 0
    else:
        input_micros = _cost(fresh, version.input_micros_per_million)
        output_micros = _cost(usage.completion_tokens, version.output_micros_per_million)
        cached_micros = _cost(cached, version.cached_micros_per_million)
        hit_micros = _cost(usage.cache_hit_tokens, version.cache_hit_micros_per_million)
    day, month = periods(usage.ts)
    return LedgerEntry(
        event_id=f"ledger:{usage.event_id}",
        ts=usage.ts,
        usage_event_id=usage.event_id,
        request_id=usage.request_id,
        key_id=usage.key_id,
        tenant=usage.tenant,
        model=usage.model,
        variant=usage.variant,
        experiment_id=usage.experiment_id,
        status=usage.status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=cached,
        price_version=version.version if version else None,
        input_micros=input_micros,
        output_micros=output_micros,
        cached_micros=cached_micros,
        cache_hit_tokens=usage.cache_hit_tokens,
        cache_hit_micros=hit_micros,
        cost_micros=input_micros + output_micros + cached_micros + hit_micros,
        occurred_at=usage.ts,
        day=day,
        month=month,
    )
