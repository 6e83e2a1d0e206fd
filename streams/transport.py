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

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiokafka
import faust
from faust.transport.consumer import CONSUMER_FETCHING
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

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop, racing each fetched batch against a flow stop instead of
        each message: mode's `wait_first` costs about 0.1 ms, which held every agent to a
        few thousand events per second. A batch cut short by a rebalance is dropped, as
        Faust drops the one message it cuts short; the rebalance seeks back anyway."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        since_yield = 0

        async def deliver(messages: Any) -> None:
            nonlocal since_yield
            async for tp, message in messages:
                since_yield += 1
                if since_yield > 100:  # let the agents run
                    await asyncio.sleep(0)
                    since_yield = 0
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is None or offset >= r_offset:
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    await callback(message)
                    set_read_offset(tp, offset)

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                messages = getmany(timeout=1.0)
                await self.sleep(0)  # getmany may return at once, again and again
                if not self.should_stop:
                    await self.wait_first(deliver(messages), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class Transport(driver.Transport):  # type: ignore[misc]
    Consumer = _Consumer


class App(faust.App):  # type: ignore[misc]
    """A Faust app on the transport above."""

    fetch_wait_ms = 1500

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)
