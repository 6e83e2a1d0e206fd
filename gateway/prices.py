"""Model prices as the gateway sees them (`sluice.prices`), so updates append versions."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from gateway.follow import Follower
from schemas import topics
from schemas.events import PriceSchedule

log = logging.getLogger("sluice.gateway.prices")


class PriceBook(Follower):
    topic = topics.PRICES

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        super().__init__(consumer)
        self.schedules: dict[str, PriceSchedule] = {}

    def on_record(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            self.apply(PriceSchedule.model_validate_json(value))
        except ValidationError:
            log.warning("ignoring malformed price schedule %r", key)

    def apply(self, schedule: PriceSchedule) -> None:
        known = self.schedules.get(schedule.model)
        if known is None or len(schedule.versions) >= len(known.versions):
            self.schedules[schedule.model] = schedule
