"""A/B tests as the gateway sees them (`sluice.experiments`), and who gets which variant.

A running test takes the traffic its `model_a` would get and sends `split` percent of
callers to `model_b`. A caller is its `user` field, or its key when that is absent, and
is hashed with the test's id, so it sees the same variant every time and different
tests split independently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from gateway.follow import Follower
from schemas import topics
from schemas.events import Experiment


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    variant: str | None = None
    experiment_id: str | None = None


def variant_for(experiment: Experiment, caller: str) -> str:
    digest = hashlib.sha256(f"{experiment.experiment_id}:{caller}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000
    return "b" if bucket < experiment.split * 100 else "a"


class ExperimentBook(Follower):
    topic = topics.EXPERIMENTS

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        super().__init__(consumer)
        self.experiments: dict[str, Experiment] = {}

    def parse(self, value: bytes) -> Experiment:
        return Experiment.model_validate_json(value)

    def apply(self, experiment: Experiment) -> None:
        known = self.experiments.get(experiment.experiment_id)
        if known is None or experiment.version >= known.version:
            self.experiments[experiment.experiment_id] = experiment

    def running_for(self, model: str) -> Experiment | None:
        for experiment in self.experiments.values():
            if experiment.status == "running" and experiment.model_a == model:
                return experiment
        return None

    def route(self, model: str, caller: str) -> Route:
        experiment = self.running_for(model)
        if experiment is None:
            return Route(model)
        variant = variant_for(experiment, caller)
        return Route(experiment.model_b if variant == "b" else experiment.model_a, variant,
                     experiment.experiment_id)
