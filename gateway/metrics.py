"""Prometheus metrics for the gateway, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
# An exact lookup takes microseconds; a semantic one waits for an embedding, or for its
# timeout: fine buckets below 25 ms, coarse ones up to the timeout.
LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05,
                  0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sluice_requests", "Inference requests by outcome.",
            ["endpoint", "model", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "sluice_request_latency_seconds", "Time from request to last byte.",
            ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.ttft = Histogram(
            "sluice_time_to_first_token_seconds", "Time from request to first token.",
            ["endpoint", "model"], buckets=TTFT_BUCKETS, registry=self.registry,
        )
        self.tokens = Counter(
            "sluice_tokens", "Tokens processed, by kind (prompt or completion).",
            ["model", "kind"], registry=self.registry,
        )
        self.in_flight = Gauge(
            "sluice_requests_in_flight", "Requests admitted and not yet finished.",
            ["model"], registry=self.registry,
        )
        self.cache_lookup = Histogram(
            "sluice_cache_lookup_seconds", "Time to look a request up in the response "
            "cache, a semantic key's embedding included, by the key's cache mode (exact or "
            "semantic) and the outcome (hit or miss); bypassed requests are not counted.",
            ["mode", "outcome"], buckets=LOOKUP_BUCKETS, registry=self.registry,
        )
        self.lease_round_trips = Counter(
            "sluice_lease_round_trips", "Lease requests to the limiter: `waited` when a "
            "request waited for the answer, `ahead` when fetched before it was needed.",
            ["when"], registry=self.registry,
        )
