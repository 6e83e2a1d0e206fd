"""Model prices as the gateway sees them (`sluice.prices`), so updates append versions."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from gateway.follow import Follower
from schemas import topics
from schemas.events import PriceSchedule


class PriceBook(Follower):
    topic = topics.PRICES

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        super().__init__(consumer)
        self.schedules: dict[str, PriceSchedule] = {}

    def parse(self, value: bytes) -> PriceSchedule:
        return PriceSchedule.model_validate_json(value)

    def apply(self, schedule: PriceSchedule) -> None:
        known = self.schedules.get(schedule.model)
        if known is None or len(schedule.versions) >= len(known.versions):
            self.schedules[schedule.model] = schedule
