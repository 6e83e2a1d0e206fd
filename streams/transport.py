"""Faust's Kafka transport, adjusted for the embedded Tansu broker.

- **Fetch wait.** Faust builds its consumer with `fetch_max_wait_ms=1500`. Apache Kafka
  answers a fetch as soon as data arrives, so that costs nothing there; Tansu looks for
  data only at the start of the wait and then at halvings of what is left of it (at 0,
  1/2, 3/4... of it), which would make every hop through the streams app take up to
  0.75 s. This transport sets the wait from the app: `App.fetch_wait_ms` while records
  of `App.busy_topics` (lease requests, which a gateway waits on) come in and for
  `App.busy_for_s` after the last, `App.idle_fetch_wait_ms` otherwise. Polling every
  3 ms cost the embedded broker and this process about a third of a core between them
  (measured: TTFT p50 of back-to-back streamed requests 65 ms with it, 55 ms with 20 ms),
  on the core the gateway and the broker serve requests from.
- **Urgent lease requests.** A request sent for a caller who waits (a key without a lease
  in hand) makes the limiter agent `hurry` the pace: for `App.busy_for_s` it polls with
  `App.urgent_fetch_wait_ms`, and its fetches hold the partitions of the busy topics
  only, every other partition once per `App.others_every_s`. Tansu looks at every
  partition of a fetch at each of its looks, so one hop through a consumer of some 60
  partitions took p50 2 ms, p99 5.6-5.9 ms, against 1 ms and 3-3.9 ms through one of a
  single partition; and a shorter wait alone did not help while each fetch held all 67.
- **End offsets.** Tansu reports a partition's end offset as the base offset of its last
  record batch plus one, not past the batch's last record. Faust recovers a table by
  reading its changelog up to that end, so a restarted worker would silently miss every
  changelog record after the first of the last batch. This transport reads the last
  batch to find the true end; on Kafka that batch ends where the broker says.
- **Flush before commit.** Faust flushes its producer before it commits source offsets,
  so that table changelog writes land first. But its buffer's flush gives up after
  0.1 s without a message sent and does not count the message being handed over, so a
  busy worker could commit past writes still in the buffer; killed then, it lost them
  (a restart recovered totals older than its committed offsets). This producer's flush
  waits until every buffered message is delivered.
- **Tracked topics.** An aiokafka client refreshes metadata for every topic until it
  first meets an unknown one (a changelog Faust created after the producer started),
  then only for topics it met that way, and forgets the rest: a refresh then lost the
  ledger's leader under a batch already queued for it, and billing stalled. This
  producer tracks every topic from the start. A table write needs its changelog's
  partition count before the producer may know it; it is the count Faust creates
  changelogs with.
- **Holes.** A record the broker shows after a later one is read again, not skipped
  (`schemas.tansu`): usage events from two workers would otherwise lose one now and then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiokafka
import faust
from aiokafka.partitioner import DefaultPartitioner
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from schemas import tansu

tansu.install()


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


class _Pace(tansu.Pace):
    """The consumer's fetch wait: short while records of the app's busy topics come in,
    long once none has for a while; and while the records that come in are urgent (a
    caller waits on each), shortest, with the fetches narrowed to the busy topics."""

    def __init__(self, app: App, fetcher: Callable[[], Any] = lambda: None) -> None:
        super().__init__(app.fetch_wait_ms, max(app.fetch_wait_ms,
                                                app.idle_fetch_wait_ms or app.fetch_wait_ms),
                         app.busy_for_s, fetcher)
        self.topics = app.busy_topics
        self.urgent_wait = min(app.urgent_fetch_wait_ms or app.fetch_wait_ms, self.fast)
        self.others_every_s = app.others_every_s
        self._urgent_until = 0.0
        self._others_at = 0.0  # when the last fetch of every topic went out
        self._narrowed = False  # whether partitions may be paused

    def seen(self, topic: str) -> None:
        if topic in self.topics:
            self.busy()

    def busy_wait(self) -> int:
        return self.urgent_wait if time.monotonic() < self._urgent_until else self.fast

    def hurry(self) -> None:
        """A caller waits on the record just read: for `busy_for_s`, poll at the shortest
        wait and read the other topics only every `others_every_s`."""
        self._urgent_until = time.monotonic() + self.busy_for_s
        self.busy()

    def after_fetch(self, assignment: Any, fetched: Mapping[Any, Any]) -> None:
        """Between two fetches, in the consumer's thread: pause the partitions of the
        other topics while hurried (the broker's looks, and so each hop, take longer the
        more partitions a fetch holds), but let every `others_every_s` one fetch take
        them all. A partition is paused only once it is caught up: what was `fetched`
        from it has been read (aiokafka drops a paused partition's fetched records, to
        fetch them again) and nothing more is known to be there; so a backlog is read at
        full speed, and narrowed fetches wait only on what arrives meanwhile. Paused,
        they keep their positions; a rebalance unpauses them."""
        now = time.monotonic()
        narrow = now < self._urgent_until and now - self._others_at < self.others_every_s
        if not narrow:
            self._others_at = now
            if not self._narrowed:
                return  # nothing of ours is paused (a rebalance only ever unpauses)
        self._narrowed = narrow
        for tp in assignment.tps:
            if tp.topic in self.topics:
                continue
            state = assignment.state_value(tp)
            if narrow and not state.paused and tp not in fetched and _caught_up(state):
                state.pause()
            elif not narrow and state.paused:
                state.resume()


def _caught_up(state: Any) -> bool:
    """Whether a consumer has read a partition up to its last known end."""
    return bool(state.has_valid_position and state.highwater is not None
                and state.position >= state.highwater)


class _ConsumerThread(driver.AIOKafkaConsumerThread):  # type: ignore[misc]
    _bootstrap: list[str]

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.consumer.pace.wait
        self._bootstrap = driver.server_list(transport.url, transport.default_port)
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        self._consumer._fetcher.after_fetch = self.consumer.pace.after_fetch

    async def _highwaters(self, partitions: Iterable[TP]) -> Mapping[TP, int]:
        ends = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return ends  # last stable offsets, from the consumer's own fetches
        return await true_ends(self._bootstrap, ends)


class _Consumer(driver.Consumer):  # type: ignore[misc]
    pace: _Pace

    def _new_consumer_thread(self) -> _ConsumerThread:
        # Made first thing in Faust's __init__: the thread's consumer starts at this wait.
        self.pace = _Pace(self.app, lambda: getattr(getattr(self._thread, "_consumer", None),
                                                    "_fetcher", None))
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop, racing each fetched batch against a flow stop instead of
        each message: mode's `wait_first` costs about 0.1 ms, which held every agent to a
        few thousand events per second. A batch cut short by a rebalance is dropped, as
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
    """A Faust app on the transport above."""

    fetch_wait_ms = 1500
    idle_fetch_wait_ms: int | None = None
    urgent_fetch_wait_ms: int | None = None
    others_every_s = 0.05
    busy_topics: frozenset[str] = frozenset()
    busy_for_s = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settled = asyncio.Event()  # set while no rebalance is under way

    def on_rebalance_start(self) -> None:
        super().on_rebalance_start()
        self.settled.clear()

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        self.settled.set()

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)
