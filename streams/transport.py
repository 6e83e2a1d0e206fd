"""Faust's Kafka transport, adjusted for the embedded Tansu broker.

- **Fetch wait.** Faust builds its consumer with `fetch_max_wait_ms=1500`. Apache Kafka
  answers a fetch as soon as data arrives, so that costs nothing there; Tansu answers
  only when the wait runs out, which would make every hop through the streams app take
  up to 1.5 s. This transport sets the wait from the app (`App.fetch_wait_ms`).
- **End offsets.** Tansu reports a partition's end offset as the base offset of its last
  record batch plus one, not past the batch's last record. Faust recovers a table by
  reading its changelog up to that end, so a restarted worker would silently miss every
  changelog record after the first of the last batch. This transport reads the last
  batch to find the true end; on Kafka that batch ends where the broker says.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as driver
from faust.types import TP


async def true_ends(bootstrap: list[str], ends: Mapping[TP, int]) -> dict[TP, int]:
    """The end offsets `ends` (as the broker reports them), extended over the records of
    each partition's last batch."""
    out = {TP(tp.topic, tp.partition): end for tp, end in ends.items()}
    tps = [aiokafka.TopicPartition(*tp) for tp, end in out.items() if end > 0]
    if not tps:
        return out
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap,
                                         enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, out[TP(*tp)] - 1)
        pending = set(tps)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batches.items():
                if records:  # a fetch returns the whole batch holding the offset asked for
                    out[TP(*tp)] = max(out[TP(*tp)], records[-1].offset + 1)
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return out


class _ConsumerThread(driver.AIOKafkaConsumerThread):  # type: ignore[misc]
    _bootstrap: list[str]

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_wait_ms", 1500)
        self._bootstrap = driver.server_list(transport.url, transport.default_port)
        return consumer

    async def _highwaters(self, partitions: Iterable[TP]) -> Mapping[TP, int]:
        ends = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return ends  # last stable offsets, from the consumer's own fetches
        return await true_ends(self._bootstrap, ends)


class _Consumer(driver.Consumer):  # type: ignore[misc]
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):  # type: ignore[misc]
    Consumer = _Consumer


class App(faust.App):  # type: ignore[misc]
    """A Faust app on the transport above."""

    fetch_wait_ms = 1500

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)
