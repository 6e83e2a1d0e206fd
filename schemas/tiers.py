"""Tiers and the limits, quotas and budgets a key carries."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Tier = Literal["free", "basic", "pro", "enterprise"]
TIERS: tuple[Tier, ...] = ("free", "basic", "pro", "enterprise")

NonNegative = Annotated[int, Field(ge=0)]


class Limits(BaseModel):
    """Rate limits. On a key, each field left unset takes its tier's default.

    `requests_per_minute` refills a bucket that holds at most `burst` requests, so an idle
    key may send `burst` at once and then `requests_per_minute` a minute. The hour and
    day limits are fixed UTC windows; `tokens_per_minute` is a fixed UTC minute.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    requests_per_minute: NonNegative | None = None
    requests_per_hour: NonNegative | None = None
    requests_per_day: NonNegative | None = None
    tokens_per_minute: NonNegative | None = None
    burst: NonNegative | None = None
    concurrent: NonNegative | None = None

    def over(self, defaults: Limits) -> Limits:
        """These overrides on top of `defaults`."""
        return defaults.model_copy(update=self.model_dump(exclude_none=True))


TIER_LIMITS: dict[Tier, Limits] = {
    "free": Limits(requests_per_minute=10, requests_per_hour=100, requests_per_day=1_000,
                   tokens_per_minute=10_000, burst=20, concurrent=2),
    "basic": Limits(requests_per_minute=60, requests_per_hour=1_000, requests_per_day=10_000,
                    tokens_per_minute=100_000, burst=100, concurrent=5),
    "pro": Limits(requests_per_minute=300, requests_per_hour=10_000, requests_per_day=100_000,
                  tokens_per_minute=500_000, burst=500, concurrent=20),
    "enterprise": Limits(requests_per_minute=1_000, requests_per_hour=50_000,
                         requests_per_day=500_000, tokens_per_minute=2_000_000, burst=2_000,
                         concurrent=100),
}


class Budget(BaseModel):
    """A quota or budget: crossing `soft` raises an alert, reaching `hard` blocks."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    soft: NonNegative | None = None
    hard: NonNegative | None = None


class Budgets(BaseModel):
    """Token quotas and spend budgets (integer micro-dollars), per UTC day and month."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    daily_tokens: Budget = Budget()
    monthly_tokens: Budget = Budget()
    daily_spend_micros: Budget = Budget()
    monthly_spend_micros: Budget = Budget()


CacheMode = Literal["off", "exact", "semantic"]
CACHE_MODES: tuple[CacheMode, ...] = get_args(CacheMode)


class CachePolicy(BaseModel):
    """Whether a key's reproducible requests (temperature 0, or a `seed`) may be answered
    from the response cache, and for how long an answer stays there. `exact` reuses the
    answer to a request the same in every part that shapes the answer; `semantic` also
    reuses it for a chat whose last message means nearly the same (cosine similarity of
    the two messages' embeddings at least `similarity`), everything else being equal.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    mode: CacheMode = "off"
    ttl_s: Annotated[int, Field(ge=1, le=30 * 86_400)] = 3_600
    similarity: Annotated[float, Field(ge=0.5, le=1.0)] = 0.95


# The names, for code that lists them (CLI flags, the quota checks): taken from the models
# so that a limit or budget added there reaches every such list.
LIMIT_NAMES: tuple[str, ...] = tuple(Limits.model_fields)
BUDGET_NAMES: tuple[str, ...] = tuple(Budgets.model_fields)
BUDGET_LEVELS: tuple[str, ...] = tuple(Budget.model_fields)
# What the streams app counts per key and tenant for each UTC day and month.
USAGE_TOTALS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_micros")


def effective_limits(tier: Tier, overrides: Limits) -> Limits:
    return overrides.over(TIER_LIMITS[tier])
