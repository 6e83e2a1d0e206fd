"""Topic names and layouts: the one place every service learns where events live."""

from __future__ import annotations

import re
from dataclasses import dataclass

INFERENCE_PREFIX = "sluice.inference."
REPLIES_PREFIX = "sluice.replies."

INFERENCE_CONTROL = "sluice.inference.control"
USAGE = "sluice.usage"
REQUESTS = "sluice.requests"
CACHE = "sluice.cache"
KEYS = "sluice.keys"
PRICES = "sluice.prices"
EXPERIMENTS = "sluice.experiments"
WORKERS = "sluice.workers"
LEDGER = "sluice.ledger"
LEASES = "sluice.leases"
ALERTS = "sluice.alerts"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How a topic is laid out: partitions bound how far its consumers can scale."""

    name: str
    partitions: int
    compacted: bool = False

    @property
    def config(self) -> dict[str, str]:
        return {"cleanup.policy": "compact"} if self.compacted else {}


def topic_safe(name: str) -> str:
    """Map a model or gateway name onto Kafka's topic alphabet."""
    return _UNSAFE.sub("_", name)


def inference(model: str, partitions: int = 8) -> TopicSpec:
    """The topic a model's workers consume, in one consumer group per model."""
    return TopicSpec(INFERENCE_PREFIX + topic_safe(model), partitions)


def replies(gateway_id: str, generation: int = 0) -> TopicSpec:
    """The topic a single gateway reads its token chunks from; a gateway that moves on to
    a fresh one (see `broker.replies`) numbers them from 1."""
    suffix = f".{generation}" if generation else ""
    return TopicSpec(REPLIES_PREFIX + topic_safe(gateway_id) + suffix, 1)


# Control messages go to every worker (no consumer group), so one partition keeps
# ordering simple; heartbeats and the other definition topics are compacted by key.
STATIC: tuple[TopicSpec, ...] = (
    TopicSpec(INFERENCE_CONTROL, 1),
    TopicSpec(USAGE, 8),
    TopicSpec(REQUESTS, 8),
    TopicSpec(CACHE, 8),
    TopicSpec(KEYS, 4, compacted=True),
    TopicSpec(PRICES, 1, compacted=True),
    TopicSpec(EXPERIMENTS, 1, compacted=True),
    TopicSpec(WORKERS, 1, compacted=True),
    TopicSpec(LEDGER, 8),
    # Lease requests are keyed by key_id and partitioned like sluice.usage, so one
    # limiter owns a key's budget whichever of the two an event arrives on.
    TopicSpec(LEASES, 8),
    TopicSpec(ALERTS, 1),
)


def static(name: str) -> TopicSpec:
    """The spec of one of the fixed topics above."""
    for spec in STATIC:
        if spec.name == name:
            return spec
    raise KeyError(name)
