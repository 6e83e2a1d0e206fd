"""Pricing one usage event: the engine's tokens at their rates, a cache hit at its own."""

from __future__ import annotations

from schemas.events import PriceSchedule, PriceVersion, UsageRecorded
from streams.billing import price

SCHEDULE = PriceSchedule(model="m", versions=(PriceVersion(
    version=1, effective_from=0.0, input_micros_per_million=1_000_000,
    output_micros_per_million=2_000_000, cached_micros_per_million=500_000,
    cache_hit_micros_per_million=100_000),))


def _usage(**tokens: int) -> UsageRecorded:
    return UsageRecorded(request_id="r", model="m", key_id="k", worker_id="w",
                         status="completed", **{"prompt_tokens": 0, "completion_tokens": 0,
                                                **tokens})


def test_engine_tokens_are_billed_at_their_rates() -> None:
    entry = price(_usage(prompt_tokens=10, completion_tokens=5, cached_tokens=4), SCHEDULE)
    assert (entry.input_micros, entry.output_micros, entry.cached_micros) == (6, 10, 2)
    assert entry.cache_hit_micros == 0 and entry.cost_micros == 18


def test_a_cache_hit_is_billed_at_the_cache_price_only() -> None:
    entry = price(_usage(cache_hit_tokens=25), SCHEDULE)
    assert entry.cache_hit_tokens == 25 and entry.cache_hit_micros == 3  # 2.5 rounds half up
    assert entry.cost_micros == 3 and entry.input_micros == entry.output_micros == 0


def test_without_a_price_a_hit_costs_nothing() -> None:
    entry = price(_usage(cache_hit_tokens=25), None)
    assert entry.price_version is None and entry.cost_micros == 0
