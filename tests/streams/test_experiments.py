"""A/B readouts: percentiles from the sketch, the significance tests and the leader."""

from __future__ import annotations

import random

from streams.experiments import ExperimentStats, Sketch, readout


def _fill(stats: ExperimentStats, variant: str, n: int, error_rate: float, mean_ms: float,
          rng: random.Random) -> None:
    v = stats.variant(variant)
    for _ in range(n):
        v.requests += 1
        if rng.random() < error_rate:
            v.errors += 1
        else:
            v.latency.add(max(1.0, rng.gauss(mean_ms, mean_ms / 5)))
            v.ttft.add(max(1.0, rng.gauss(mean_ms / 4, mean_ms / 20)))


def test_sketch_percentiles_are_within_five_percent() -> None:
    rng = random.Random(1)
    values = [rng.lognormvariate(5, 0.8) for _ in range(20_000)]
    sketch = Sketch()
    for v in values:
        sketch.add(v)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert abs(sketch.quantile(q) - exact) / exact < 0.05, q  # type: ignore[operator]


def test_error_rate_difference_is_significant_and_decides_the_leader() -> None:
    rng, stats = random.Random(2), ExperimentStats()
    _fill(stats, "a", 2000, 0.02, 300, rng)
    _fill(stats, "b", 2000, 0.10, 250, rng)
    out = readout(stats)
    assert out["tests"]["error_rate"]["significant"] is True
    assert out["tests"]["error_rate"]["p_value"] < 0.001
    assert out["leader"] == "a" and "error" in out["reason"]


def test_latency_decides_when_error_rates_match() -> None:
    rng, stats = random.Random(3), ExperimentStats()
    _fill(stats, "a", 1000, 0.0, 400, rng)
    _fill(stats, "b", 1000, 0.0, 300, rng)
    out = readout(stats)
    assert out["tests"]["error_rate"]["significant"] is False
    assert out["tests"]["latency"]["significant"] is True
    assert out["leader"] == "b" and "latency" in out["reason"]
    b = out["variants"]["b"]["latency_ms"]
    assert b["p50"] < b["p95"] < b["p99"] and 270 < b["p50"] < 330


def test_no_leader_without_evidence() -> None:
    rng, stats = random.Random(4), ExperimentStats()
    _fill(stats, "a", 30, 0.0, 300, rng)
    _fill(stats, "b", 30, 0.0, 301, rng)
    out = readout(stats)
    assert out["leader"] is None
    assert out["tests"]["latency"]["significant"] is False
    empty = readout(ExperimentStats())
    assert empty["leader"] is None and empty["variants"]["a"]["latency_ms"]["p50"] is None


def test_replays_are_skipped_and_state_round_trips() -> None:
    stats = ExperimentStats()
    assert stats.first_time("requests:1", 5) and not stats.first_time("requests:1", 5)
    stats.a.latency.add(10.0)
    again = ExperimentStats.load(stats.dump())
    assert not again.first_time("requests:1", 4) and again.a.latency.count == 1
