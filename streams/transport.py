"""Faust's Kafka transport, with fixes Faust needs on any broker, and the broker's pace.

- **Flush before commit.** Faust flushes its producer before it commits source offsets,
  so that table changelog writes land first. But its buffer's flush gives up after
  0.1 s without a message sent and does not count the message being handed over, so a
  busy worker could commit past writes still in the buffer and, killed then, lose them.
  This producer's flush waits until every buffered message is delivered.
- **Tracked topics.** An aiokafka client refreshes metadata for every topic until it
  first meets an unknown one (a changelog Faust created after the producer started),
  then only for topics it met that way, and forgets the rest: a refresh could lose the
  ledger's leader under a batch already queued for it. This producer tracks every topic
  from the start. A table write needs its changelog's partition count before the
  producer may know it; it is the count Faust creates changelogs with.
- **Batches, and rebalances.** The fetch loop races each fetched batch (not each
  message) against a flow stop, and holds messages back until a rebalance has ended
  (see `_Consumer._drain_messages`).
- **The broker's profile** (`App.broker`): the consumer's fetch wait, changed with what
  comes in where the profile paces it (`broker.tansu.StreamsPace`), and end offsets
  corrected where the broker misreports them (table recovery reads changelogs to the end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from broker import Broker
from broker.tansu import StreamsPace


class _ConsumerThread(driver.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        pace = self.consumer.pace
        consumer._fetch_max_wait_ms = (pace.wait if pace is not None
                                       else self.app.broker.profile.streams_wait_ms)
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        if self.consumer.pace is not None:
            self._consumer._fetcher.after_fetch = self.consumer.pace.after_fetch

    async def _highwaters(self, partitions: Iterable[TP]) -> Mapping[TP, int]:
        ends = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return ends  # last stable offsets, from the consumer's own fetches
        return await self.app.broker.true_ends(dict(ends))


class _Consumer(driver.Consumer):  # type: ignore[misc]
    pace: StreamsPace | None

    def _new_consumer_thread(self) -> _ConsumerThread:
        # Made first thing in Faust's __init__: the thread's consumer starts at this wait.
        self.pace = self.app.broker.streams_pace(
            self.app.busy_topics,
            lambda: getattr(getattr(self._thread, "_consumer", None), "_fetcher", None))
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop, racing each fetched batch against a flow stop instead of
        each message (mode's `wait_first` per message held every agent to a few thousand
        events per second). A batch cut short by a rebalance is dropped, as
        Faust drops the one message it cuts short; the rebalance seeks back anyway.

        It also holds the streams' messages back until a rebalance has ended. At the end
        of one Faust resumes the partitions, seeks them to their committed offsets one by
        one (a round trip each), and then empties the streams' queues: a partition sought
        early was fetched meanwhile, and what it delivered was thrown away with no seek
        after it, lost until the next restart. Nor may a message reach a stream while the
        app's flow is off: the stream would skip it and ack it. Messages of an earlier
        generation are dropped here: the rebalance that ended it seeks their partitions
        back.
        """
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        flow = self.app.flow_control
        app = self.app
        since_yield = 0
        pace = self.pace

        async def deliver(messages: Any) -> None:
            nonlocal since_yield
            async for tp, message in messages:
                if pace is not None:
                    pace.seen(tp.topic)
                since_yield += 1
                if since_yield > 100:  # let the agents run
                    await asyncio.sleep(0)
                    since_yield = 0
                if app.rebalancing and tp.topic not in app.tables.changelog_topics:
                    await app.settled.wait()
                if not flow.is_active():
                    await flow.acquire()
                if message.generation_id != app.consumer_generation_id:
                    continue
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
                if pace is not None:
                    pace.tick()
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


class _Producer(driver.Producer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: set[asyncio.Future[Any]] = set()
        self._partitioner = DefaultPartitioner()

    async def on_start(self) -> None:
        await super().on_start()
        client = self._ensure_producer().client
        for topic in client.cluster.topics():  # all of them, from the bootstrap load
            client.add_topic(topic)

    def key_partition(self, topic: str, key: bytes) -> TP:
        """The partition a table's changelog record for `key` goes to; before the producer
        has the changelog's metadata, from the partition count Faust creates it with."""
        if self._ensure_producer().client.cluster.partitions_for_topic(topic) is not None:
            return super().key_partition(topic, key)
        every = list(range(self.app.conf.topic_partitions))
        return TP(topic, self._partitioner(key, every, every))

    def send_soon(self, fut: Any) -> None:
        self.track(fut)
        super().send_soon(fut)

    def track(self, fut: asyncio.Future[Any]) -> None:
        """Make `flush` (and so the next offset commit) wait until `fut` is delivered."""
        self._unsent.add(fut)
        fut.add_done_callback(self._delivered)

    def _delivered(self, fut: asyncio.Future[Any]) -> None:
        self._unsent.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self.log.error("Could not send a message: %r", fut.exception())

    async def flush(self) -> None:
        while True:
            await super().flush()
            unsent = set(self._unsent)
            if not unsent or self.should_stop:
                return
            await asyncio.wait(unsent, timeout=1.0)


class Transport(driver.Transport):  # type: ignore[misc]
    Consumer = _Consumer
    Producer = _Producer


class App(faust.App):  # type: ignore[misc]
    """A Faust app on the transport above; `broker` is set before the app starts, and
    `busy_topics` are those whose records a caller waits on (they set the pace)."""

    broker: Broker
    busy_topics: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settled = asyncio.Event()  # set while no rebalance is under way

    def hurry(self) -> None:
        """A caller waits on the record just read: poll fast for a while, where the
        broker's profile paces this app's fetches."""
        if (pace := self.consumer.pace) is not None:
            pace.hurry()

    def on_rebalance_start(self) -> None:
        super().on_rebalance_start()
        self.settled.clear()

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        self.settled.set()

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)
