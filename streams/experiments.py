"""A/B test metrics per variant, and the readout that says which variant leads.

Latency and TTFT percentiles come from a log-bucketed histogram (buckets 5% wide, so a
percentile is within 5% of the exact value) that is small, mergeable and JSON-friendly.
Means and variances are kept exactly for Welch's t-test on latency; error rates are
compared with a two-proportion z-test. Both use the normal approximation, which is
sound at the sample sizes an A/B test needs before it can call a winner anyway.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

GROWTH = 1.1
ALPHA = 0.05


def _bucket(ms: float) -> int:
    return math.floor(math.log(max(ms, 0.01)) / math.log(GROWTH))


@dataclass
class Sketch:
    buckets: dict[str, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, ms: float) -> None:
        b = str(_bucket(ms))
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.count += 1
        self.total += ms
        self.total_sq += ms * ms

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = q * (self.count - 1)
        seen = 0
        for b in sorted(self.buckets, key=int):
            seen += self.buckets[b]
            if seen > rank:
                lo = GROWTH ** int(b)
                return round(lo * (1 + GROWTH) / 2, 2)
        return None

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def variance(self) -> float:
        if self.count < 2:
            return 0.0
        return max(0.0, (self.total_sq - self.total * self.total / self.count) / (self.count - 1))

    def summary(self) -> dict[str, float | None]:
        return {"p50": self.quantile(0.5), "p95": self.quantile(0.95),
                "p99": self.quantile(0.99), "mean": round(self.mean, 2) if self.count else None}


@dataclass
class VariantStats:
    model: str = ""
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    cache_hits: int = 0
    latency: Sketch = field(default_factory=Sketch)
    ttft: Sketch = field(default_factory=Sketch)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model, "requests": self.requests, "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_micros": self.cost_micros, "cache_hits": self.cache_hits,
            "latency_ms": self.latency.summary(), "ttft_ms": self.ttft.summary(),
        }


@dataclass
class ExperimentStats:
    """One value of the `experiment_metrics` table."""

    a: VariantStats = field(default_factory=VariantStats)
    b: VariantStats = field(default_factory=VariantStats)
    # Highest offset applied per "topic:partition" of origin: replays are skipped.
    origins: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, raw: dict[str, Any] | None) -> ExperimentStats:
        if not raw:
            return cls()

        def variant(v: dict[str, Any]) -> VariantStats:
            return VariantStats(**{**v, "latency": Sketch(**v["latency"]),
                                   "ttft": Sketch(**v["ttft"])})

        return cls(a=variant(raw["a"]), b=variant(raw["b"]), origins=dict(raw["origins"]))

    def dump(self) -> dict[str, Any]:
        return asdict(self)

    def variant(self, name: str) -> VariantStats:
        return self.b if name == "b" else self.a

    def first_time(self, origin: str, offset: int) -> bool:
        if offset <= self.origins.get(origin, -1):
            return False
        self.origins[origin] = offset
        return True


def _p_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def error_rate_test(a: VariantStats, b: VariantStats) -> dict[str, Any]:
    """Two-proportion z-test on the error rates."""
    if not a.requests or not b.requests:
        return {"z": None, "p_value": None, "significant": False}
    pooled = (a.errors + b.errors) / (a.requests + b.requests)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.requests + 1 / b.requests))
    if se == 0:
        return {"z": 0.0, "p_value": 1.0, "significant": False}
    z = (b.error_rate - a.error_rate) / se
    p = _p_two_sided(z)
    return {"z": round(z, 3), "p_value": round(p, 5), "significant": p < ALPHA}


def latency_test(a: Sketch, b: Sketch) -> dict[str, Any]:
    """Welch's t-test on mean latency (normal approximation)."""
    if a.count < 2 or b.count < 2:
        return {"t": None, "p_value": None, "significant": False}
    se = math.sqrt(a.variance / a.count + b.variance / b.count)
    if se == 0:
        return {"t": 0.0, "p_value": 1.0, "significant": a.mean != b.mean}
    t = (b.mean - a.mean) / se
    p = _p_two_sided(t)
    return {"t": round(t, 3), "p_value": round(p, 5), "significant": p < ALPHA}


def readout(stats: ExperimentStats) -> dict[str, Any]:
    """Both variants, both tests, and the leader: fewer errors first, then lower latency."""
    errors = error_rate_test(stats.a, stats.b)
    latency = latency_test(stats.a.latency, stats.b.latency)
    leader, reason = None, "no significant difference yet"
    if errors["significant"]:
        leader = "a" if stats.a.error_rate < stats.b.error_rate else "b"
        reason = "lower error rate (significant)"
    elif latency["significant"]:
        leader = "a" if stats.a.latency.mean < stats.b.latency.mean else "b"
        reason = "lower mean latency (significant)"
    return {
        "variants": {"a": stats.a.summary(), "b": stats.b.summary()},
        "tests": {"error_rate": errors, "latency": latency},
        "leader": leader,
        "reason": reason,
    }
