"""The sink: every event on sluice.requests, .usage, .cache and .ledger, into ClickHouse.

One member of the analytics consumer group. It collects records until it holds
`batch_max_events` of them, the oldest has waited `batch_max_wait_s`, or nothing more has
come for `batch_idle_s` (light traffic lands at once), and then:

1. decodes them and drops events already stored: an id it has seen before (producers are
   at-least-once too; a ledger entry may be priced twice under one id);
2. journals the batch: its offset span per partition and the records it dropped;
3. inserts one block per table, each with a deduplication token made from its event ids;
4. and only then commits the offsets.

A sink killed anywhere in there loses nothing, since offsets move only after the insert,
and stores nothing twice: when a partition is assigned, a committed offset that starts a
journaled batch means that batch may or may not have landed. The new owner reads exactly
that batch back from Kafka and inserts it again; the same events make the same tokens, so
ClickHouse keeps what had landed once and adds what had not, rollups included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from analytics import journal, landing
from analytics.exceptions import AnalyticsError
from analytics.landing import Blocks
from analytics.rows import TABLES
from analytics.settings import Settings
from analytics.warehouse import Warehouse
from broker import Broker
from schemas import topics
from schemas.events import AnyEvent, decode

log = logging.getLogger("sluice.analytics.sink")

Records = dict[TopicPartition, list[ConsumerRecord]]
REPLAY_QUIET_S = 5.0

# The streams the sink lands in ClickHouse, one table each.
SOURCES: tuple[str, ...] = (topics.REQUESTS, topics.USAGE, topics.CACHE, topics.LEDGER)
DRAIN_S = 10.0  # at a stop, how long to keep taking what is already on the topics


@dataclass
class SinkStats:
    """What the sink has done since it started (served at /v1/admin/analytics/sink)."""

    running: bool = False
    consuming: bool = False  # joined the group and holds partitions, recovered
    # What it is doing now: waiting, collecting, journaling, inserting, committing,
    # recovering. Useful to see where a stuck sink is (and for the crash test).
    phase: str = "waiting"
    consumed: int = 0
    stored: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    undecodable: int = 0
    misplaced: int = 0
    batches: int = 0  # landed and committed
    landed_batches: int = 0  # landed; one more than `batches` while its commit is on the way
    tables_landed: int = 0  # of the batch being inserted
    replayed_batches: int = 0
    last_batch_at: float | None = None
    last_error: str | None = None


class RecentIds:
    """Ids of the events stored lately, forgetting the oldest beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add_all(self, ids: Iterable[str]) -> None:
        for event_id in ids:
            self._ids[event_id] = None
        overflow = len(self._ids) - self.capacity
        if overflow > 0:
            for old in list(itertools.islice(self._ids, overflow)):
                del self._ids[old]


def _position(record: ConsumerRecord) -> str:
    return f"{record.topic}:{record.partition}:{record.offset}"


def _decode(record: ConsumerRecord) -> AnyEvent | None:
    try:
        return decode(record.value) if record.value else None
    except ValidationError:
        return None


@dataclass
class Prepared:
    """A batch decoded and deduplicated, ready to be journaled and inserted."""

    entry: journal.Entry
    blocks: Blocks
    kept: list[str]
    undecodable: int


def prepare(records: Records, recent: RecentIds | None, skip: frozenset[str] = frozenset()
            ) -> Prepared:
    """Decode `records` in offset order and build their blocks.

    Live batches drop events whose id is in `recent` or earlier in the batch, and note
    their positions; a replay drops exactly the positions its journal entry noted.
    """
    spans, skipped, kept = [], set(), []
    seen: set[str] = set()
    out = Blocks()
    undecodable = 0
    for tp in sorted(records, key=lambda tp: (tp.topic, tp.partition)):
        batch = records[tp]
        first_event = _decode(batch[0])
        spans.append(journal.Span(tp.topic, tp.partition, batch[0].offset, batch[-1].offset,
                                  first_event.event_id if first_event else ""))
        for record in batch:
            event = first_event if record is batch[0] else _decode(record)
            if event is None:
                undecodable += 1
                continue
            where = _position(record)
            duplicate = (where in skip if recent is None
                         else event.event_id in seen or event.event_id in recent)
            if duplicate:
                skipped.add(where)
                continue
            seen.add(event.event_id)
            out.add(tp.topic, event)
            kept.append(event.event_id)
    return Prepared(journal.Entry(tuple(spans), frozenset(skipped)), out, kept, undecodable)


class _Pending:
    def __init__(self) -> None:
        self.records: Records = {}
        self.count = 0
        self.since: float | None = None

    def add(self, fetched: Records) -> None:
        for tp, batch in fetched.items():
            if batch:
                self.records.setdefault(tp, []).extend(batch)
                self.count += len(batch)
        if self.count and self.since is None:
            self.since = time.monotonic()


class Sink:
    """Consumes the analytics topics in a group and lands them in ClickHouse in batches."""

    def __init__(self, settings: Settings, warehouse: Warehouse, ready: asyncio.Event) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.broker = Broker.of(settings)
        self.stats = SinkStats()
        self._ready = ready
        self._recent = RecentIds(settings.dedup_capacity)
        self._pending = _Pending()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None

    def stop(self) -> None:
        """Ask the sink to land what it holds, commit and leave the group."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until `stop()`. Failures (Kafka or ClickHouse away) restart the consumer
        after a pause; events wait in Kafka meanwhile."""
        backoff = 0.5
        warmed = False
        while not self._stopping.is_set():
            try:
                if not await self._until_stopped(self._ready.wait()):
                    break
                if not warmed:
                    await self._warm()
                    warmed = True
                self.stats.running = True
                await self._consume()
                backoff = 0.5
            except Exception as exc:
                # Kafka or ClickHouse away, or a bug: either way the events wait in Kafka
                # and nothing was committed past what landed.
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                expected = isinstance(exc, KafkaError | AnalyticsError | OSError)
                log.warning("sink restarting in %.1fs: %s", backoff, self.stats.last_error,
                            exc_info=None if expected else exc)
                await self._until_stopped(asyncio.sleep(backoff))
                backoff = min(backoff * 2, 10.0)
            finally:
                self.stats.running = self.stats.consuming = False
                self.stats.phase = "waiting"
        log.info("sink stopped: what it held is landed and committed")

    async def _until_stopped(self, aw: Coroutine[Any, Any, Any]) -> bool:
        """Await `aw`, or cancel it when `stop()` comes first (then False)."""
        task = asyncio.ensure_future(aw)
        stopping = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if task in done:
            task.result()
            return True
        task.cancel()
        return False

    async def _warm(self) -> None:
        """Remember the ids stored in the last `dedup_warm_s`, to drop their duplicates."""
        def load() -> list[str]:
            ids: list[str] = []
            with self.warehouse.writer() as client:
                for table in TABLES:
                    ids += [r[0] for r in client.query(
                        f"SELECT event_id FROM {table.name} WHERE {table.time_column} >= "
                        "now64(3) - toIntervalMillisecond({window:UInt64}) LIMIT {cap:UInt64}",
                        parameters={"window": int(self.settings.dedup_warm_s * 1000),
                                    "cap": self.settings.dedup_capacity}).result_rows]
            return ids
        self._recent.add_all(await asyncio.to_thread(load))
        log.info("sink remembers %d recent event ids", len(self._recent))

    async def _consume(self) -> None:
        settings = self.settings
        await self.broker.ensure()
        consumer = self.broker.member(
            settings.analytics_group, self.broker.profile.sink_wait_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024)
        consumer.subscribe(list(SOURCES), listener=_Listener(self, consumer))
        await consumer.start()
        self._failure = None
        self.stats.phase = "collecting"
        try:
            while not self._stopping.is_set():
                room = max(1, settings.batch_max_events - self._pending.count)
                fetched = await consumer.getmany(timeout_ms=self._wait_ms(), max_records=room)
                if self._failure is not None:
                    raise self._failure
                self._pending.add(fetched)
                self.stats.consumed += sum(len(b) for b in fetched.values())
                if self._due() or (self._pending.count and not any(fetched.values())):
                    async with self._lock:
                        await self._flush(consumer)
            await self._drain(consumer)
            async with self._lock:
                await self._flush(consumer)
        finally:
            self._pending = _Pending()
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _drain(self, consumer: AIOKafkaConsumer) -> None:
        """On the way out, take what is already on the topics (up to `DRAIN_S`): a stack
        stopping in order stops the producers first, and their last events land too."""
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and self._failure is None:
            fetched = await consumer.getmany(timeout_ms=200, max_records=10_000)
            if not any(fetched.values()):
                return
            self._pending.add(fetched)
            self.stats.consumed += sum(len(b) for b in fetched.values())
            if self._pending.count >= self.settings.batch_max_events:
                async with self._lock:
                    await self._flush(consumer)

    def _wait_ms(self) -> int:
        """Until the next fetch gives up: with records in hand, no longer than the idle
        wait (an empty fetch then lands them) nor past the batch's deadline."""
        settings = self.settings
        if self._pending.since is None:
            return int(settings.batch_max_wait_s * 1000)
        left = settings.batch_max_wait_s - (time.monotonic() - self._pending.since)
        return max(0, int(min(left, settings.batch_idle_s) * 1000))

    def _due(self) -> bool:
        pending = self._pending
        return pending.count >= self.settings.batch_max_events or (
            pending.since is not None
            and time.monotonic() - pending.since >= self.settings.batch_max_wait_s)

    async def _flush(self, consumer: AIOKafkaConsumer) -> None:
        """Land the pending records and commit their offsets. Caller holds the lock."""
        pending, self._pending = self._pending, _Pending()
        if not pending.count:
            return
        ready = await asyncio.to_thread(prepare, pending.records, self._recent)
        written = await asyncio.to_thread(self._write, ready, True)
        self.stats.landed_batches += 1
        self.stats.phase = "committing"
        try:
            await consumer.commit({tp: batch[-1].offset + 1
                                   for tp, batch in pending.records.items()})
        except KafkaError as exc:
            # The rows are in; whoever owns these partitions next finds the batch in the
            # journal and inserts it again, which ClickHouse drops as a repeat.
            log.warning("commit failed after insert (%s); the journal covers it", exc)
        self._recent.add_all(ready.kept)
        self._count(ready, written)
        self.stats.batches += 1
        self.stats.phase = "collecting"

    def _write(self, ready: Prepared, journaled: bool) -> dict[str, int]:
        with self.warehouse.writer() as client:
            if journaled:
                self.stats.phase = "journaling"
                journal.record(client, self.settings.analytics_group, ready.entry)
            self.stats.phase = "inserting"
            self.stats.tables_landed = 0
            return landing.land(client, ready.blocks, landed=self._table_landed)

    def _table_landed(self, table: str) -> None:
        self.stats.tables_landed += 1

    def _count(self, ready: Prepared, written: dict[str, int]) -> None:
        stats = self.stats
        for table, n in written.items():
            stats.stored[table] = stats.stored.get(table, 0) + n
        stats.duplicates += len(ready.entry.skipped)
        stats.undecodable += ready.undecodable
        stats.misplaced += ready.blocks.misplaced
        stats.last_batch_at = time.time()

    # -- rebalancing and recovery -----------------------------------------------------------

    async def revoked(self, consumer: AIOKafkaConsumer) -> None:
        """Partitions are leaving: land and commit what we hold for them first."""
        self.stats.consuming = False
        async with self._lock:
            try:
                await self._flush(consumer)
            except Exception as exc:
                self._failure = exc

    async def assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Settle the batches left in doubt on these partitions, then start after them."""
        consumer.pause(*assigned)
        try:
            async with self._lock:
                self.stats.phase = "recovering"
                await self._recover(consumer, assigned)
                self.stats.phase = "collecting"
        except Exception as exc:
            # Consuming from the committed offsets now could cut a doubtful batch
            # differently and store it twice; the run loop restarts the consumer instead.
            log.warning("recovery failed: %s", exc)
            self._failure = exc
            return
        consumer.resume(*assigned)
        self.stats.consuming = True

    async def _recover(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        starts: dict[str, TopicPartition] = {}
        positions: dict[TopicPartition, int] = {}
        for tp in assigned:
            committed = await consumer.committed(tp)
            if committed is None:
                # Commit where a new group starts, so a first batch that dies in doubt is
                # found by its start like any other.
                committed = (await consumer.beginning_offsets([tp]))[tp]
                await consumer.commit({tp: committed})
            positions[tp] = committed
            starts[journal.start(tp.topic, tp.partition, committed)] = tp

        def doubtful() -> list[journal.Entry]:
            with self.warehouse.writer() as client:
                return journal.starting_at(client, self.settings.analytics_group, list(starts))

        moved: dict[TopicPartition, int] = {}
        for entry in await asyncio.to_thread(doubtful):
            if await self._replay(entry):
                for span in entry.spans:
                    tp = TopicPartition(span.topic, span.partition)
                    if tp in assigned and positions[tp] == span.first:
                        moved[tp] = positions[tp] = span.last + 1
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        if moved:
            await consumer.commit(moved)

    async def _replay(self, entry: journal.Entry) -> bool:
        """Insert a doubtful batch again exactly as it was first built."""
        records = await self._read(entry.spans)
        if records is None:
            return False
        ready = prepare(records, None, entry.skipped)
        written = await asyncio.to_thread(self._write, ready, False)
        self._recent.add_all(ready.kept)
        self._count(ready, written)
        self.stats.replayed_batches += 1
        log.info("replayed batch %s left in doubt: %s", entry.batch_id,
                 ", ".join(f"{s.topic}[{s.partition}] {s.first}..{s.last}" for s in entry.spans))
        return True

    async def _read(self, spans: tuple[journal.Span, ...]) -> Records | None:
        """The records of `spans` from Kafka, or None if they are not the ones journaled
        (a broker that lost its topics reuses offsets) or no longer there (retention)."""
        by_tp = {TopicPartition(s.topic, s.partition): s for s in spans}
        reader = self.broker.reader(self.broker.profile.sink_wait_ms, auto_offset_reset="none")
        await reader.start()
        out: Records = {tp: [] for tp in by_tp}
        try:
            reader.assign(list(by_tp))
            for tp, span in by_tp.items():
                reader.seek(tp, span.first)
            waiting = set(by_tp)
            # A real doubtful batch was all there when it was read first, so it reads back
            # at once; a partition that stays silent short of `last` is another topic's.
            quiet_until = time.monotonic() + REPLAY_QUIET_S
            while waiting:
                fetched = await reader.getmany(*waiting, timeout_ms=200)
                if any(fetched.values()):
                    quiet_until = time.monotonic() + REPLAY_QUIET_S
                elif time.monotonic() > quiet_until:
                    log.warning("a journaled batch is not all in Kafka (a broker that lost "
                                "its topics?); ignoring it")
                    return None
                for tp, batch in fetched.items():
                    out[tp] += [r for r in batch if r.offset <= by_tp[tp].last]
                    if not self._same_start(out[tp], by_tp[tp]):
                        return None
                    if batch and batch[-1].offset >= by_tp[tp].last:
                        waiting.discard(tp)
                        reader.pause(tp)
        except OffsetOutOfRangeError:
            log.error("a doubtful batch is no longer in Kafka (retention); it cannot be "
                      "checked")
            return None
        finally:
            await reader.stop()
        return out

    @staticmethod
    def _same_start(records: list[ConsumerRecord], span: journal.Span) -> bool:
        if not records:
            return True
        first = _decode(records[0])
        if records[0].offset == span.first and (
                first.event_id if first else "") == span.first_event_id:
            return True
        log.warning("journal entry for %s[%d] does not match the topic any more; ignoring it",
                    span.topic, span.partition)
        return False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: Sink, consumer: AIOKafkaConsumer) -> None:
        self.sink = sink
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.sink.revoked(self.consumer)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.sink.assigned(self.consumer, assigned)
