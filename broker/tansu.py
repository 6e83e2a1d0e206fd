"""Workarounds for the embedded broker (Tansu 0.6, memory storage), installed only by its
profile (`broker.profiles`); Apache Kafka has none of these habits.

- **Holes.** When two or more producers write one partition, a record can become
  visible after the one behind it; a consumer that fetches in between would move past
  the earlier one and never see it. A fetch response now ends at the first hole, and
  the fetcher asks again from there for up to `GRACE_S` before it reads on. Only topics
  that are not compacted are checked: compacted topics have holes by design.
- **Slow fetches.** Reading a partition costs the broker time per batch in it, and a
  fetch whose reading outlasts its wait comes back empty, so a consumer with a short
  wait would stop receiving from a large partition. A run of empty fetches from a
  partition with records past the fetch offset doubles the wait (up to
  `STARVED_MAX_FACTOR` times); it is halved again after `STARVED_COOLDOWN_S`.
- **Polling.** The broker looks for records only at the start of a fetch's wait and at
  halvings of what is left, so a wait is a consumer's latency: `Pace` keeps a short one
  only while somebody waits on the records, and `StreamsPace` also narrows the streams
  app's fetches to the lease requests while callers wait on them (each look costs more
  the more partitions a fetch holds).
- **End offsets.** The broker reports a partition's end as the base offset of its last
  batch plus one; `true_ends` reads that batch to find the real end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiokafka
from aiokafka import TopicPartition
from aiokafka.consumer import fetcher

from schemas import topics

log = logging.getLogger("sluice.kafka")

GRACE_S = 0.5
STARVED_RUN = 3  # empty fetches in a row below the high watermark that double the wait
STARVED_MAX_FACTOR = 16  # the wait grows to at most this many times the configured one
STARVED_COOLDOWN_S = 10.0  # a raised fetch wait is halved after this long without need

_COMPACTED = frozenset(s.name for s in topics.STATIC if s.compacted)
_holes: dict[tuple[TopicPartition, int], float] = {}  # when each hole was first met


def _forget(before: float) -> None:
    for hole in [h for h, since in _holes.items() if since < before]:
        del _holes[hole]


def _compacted(topic: str) -> bool:
    return topic in _COMPACTED or topic.endswith("-changelog")  # Faust's table logs


class _UpToHole:
    """The record batches of one fetch response, ending at the first hole."""

    def __init__(self, tp: TopicPartition, records: Any, fetch_offset: int) -> None:
        self._tp = tp
        self._records = records
        self._expected = fetch_offset
        self._ahead: Any = None

    def has_next(self) -> bool:
        if self._ahead is None and self._records.has_next():
            self._ahead = self._records.next_batch()
        if self._ahead is None:
            return False
        hole = (self._tp, self._expected)
        if self._ahead.base_offset > self._expected:
            if hole not in _holes and len(_holes) >= 1000:
                _forget(time.monotonic() - 60)
            since = _holes.setdefault(hole, time.monotonic())
            if time.monotonic() - since < GRACE_S:
                return False  # fetch from the hole again
            log.warning("%s[%d]: offsets %d-%d never arrived; reading on", self._tp.topic,
                        self._tp.partition, self._expected, self._ahead.base_offset - 1)
        _holes.pop(hole, None)
        return True

    def next_batch(self) -> Any:
        if not self.has_next():
            return None
        batch, self._ahead = self._ahead, None
        self._expected = max(self._expected, batch.next_offset)
        return batch

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())


_original_records = fetcher.PartitionRecords


class _PartitionRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    def __init__(self, tp: TopicPartition, records: Any, aborted: Any, fetch_offset: int,
                 *args: Any) -> None:
        if not _compacted(tp.topic):
            records = _UpToHole(tp, records, fetch_offset)
        super().__init__(tp, records, aborted, fetch_offset, *args)


_original_fetch = fetcher.Fetcher._proc_fetch_request


async def _proc_fetch_request(self: Any, assignment: Any, node_id: int, request: Any) -> Any:
    """Fetch as aiokafka does; let the fetcher's `after_fetch(assignment, records)`, if it
    has one, pause or resume partitions before the next fetch is made (the streams app
    narrows its fetches so); then, if the broker sent nothing from a partition that has
    records past the fetch offset, double the fetch wait (see `_starved`)."""
    result = await _original_fetch(self, assignment, node_id, request)
    if (after := self.__dict__.get("after_fetch")) is not None and assignment.active:
        after(assignment, self._records)
    now = time.monotonic()
    base = self.__dict__.setdefault("_sluice_base_wait_ms", self._fetch_max_wait_ms)
    starved = assignment.active and _starved(self, assignment, request)
    # A busy machine can make one fetch miss its wait; only a run of them is the habit.
    self._sluice_starved_runs = getattr(self, "_sluice_starved_runs", 0) + 1 if starved else 0
    if self._sluice_starved_runs >= STARVED_RUN:
        self._sluice_starved_runs = 0
        self._sluice_starved_at = now
        wait = min(base * STARVED_MAX_FACTOR, self._fetch_max_wait_ms * 2)
        if wait != self._fetch_max_wait_ms:
            self._fetch_max_wait_ms = wait
            log.warning("fetches come back empty below the high watermark: waiting %d ms",
                        wait)
    elif (not starved and self._fetch_max_wait_ms > base
          and now - getattr(self, "_sluice_starved_at", 0.0) > STARVED_COOLDOWN_S):
        self._fetch_max_wait_ms = max(base, self._fetch_max_wait_ms // 2)
        self._sluice_starved_at = now
    return result


def set_fetch_wait(fetcher: Any, wait_ms: int) -> None:
    """Give a running consumer's fetcher another fetch wait; a raise for slow fetches
    (above) carries over in proportion."""
    base = fetcher.__dict__.get("_sluice_base_wait_ms", fetcher._fetch_max_wait_ms)
    raised = fetcher._fetch_max_wait_ms / base if base else 1.0
    fetcher._sluice_base_wait_ms = wait_ms
    fetcher._fetch_max_wait_ms = max(1, round(wait_ms * raised))


class Pace:
    """A running consumer's fetch wait: `fast` while its owner says it is busy (and for
    `busy_for_s` after), `slow` otherwise; the short wait costs polling, so only when
    someone waits on the records."""

    def __init__(self, fast: int, slow: int, busy_for_s: float,
                 fetcher: Callable[[], Any]) -> None:
        self.fast = fast
        self.slow = slow
        self.busy_for_s = busy_for_s
        self.wait = slow
        self._fetcher = fetcher  # the consumer's fetcher, None until it has started
        self._last = 0.0

    def busy(self) -> None:
        self._last = time.monotonic()
        self._set(self.busy_wait())

    def busy_wait(self) -> int:
        """The wait while busy (a subclass may shorten it further)."""
        return self.fast

    def tick(self) -> None:
        """Back to the slow wait once nothing has been busy for `busy_for_s`."""
        if self.wait != self.slow and time.monotonic() - self._last > self.busy_for_s:
            self._set(self.slow)

    def _set(self, wait: int) -> None:
        if wait == self.wait or (fetcher := self._fetcher()) is None:
            return
        self.wait = wait
        set_fetch_wait(fetcher, wait)


def _starved(self: Any, assignment: Any, request: Any) -> bool:
    """Whether the broker sent nothing from a partition that has records past the fetch
    offset (its reading outlasted the wait)."""
    for topic, partitions in request.topics:
        for partition, offset, _ in partitions:
            tp = TopicPartition(topic, partition)
            state = assignment.state_value(tp)
            if state is None or tp in self._records:
                continue
            end = state.lso if state.lso is not None else state.highwater
            if end is not None and end > offset:
                return True
    return False


def install(*, holes: bool, slow_fetches: bool) -> None:
    """Make this process's aiokafka consumers stop at holes and outwait slow fetches, as
    asked (idempotent; the process's profile decides)."""
    if holes:
        fetcher.PartitionRecords = _PartitionRecords
    if slow_fetches:
        fetcher.Fetcher._proc_fetch_request = _proc_fetch_request


def installed() -> bool:
    """Whether any of the workarounds above is in place in this process."""
    return (fetcher.PartitionRecords is not _original_records
            or fetcher.Fetcher._proc_fetch_request is not _original_fetch)


class StreamsPace(Pace):
    """The streams app's fetch wait: short while records of its busy topics come in, long
    once none has for a while; and while the records that come in are urgent (a caller
    waits on each), shortest, with the fetches narrowed to the busy topics."""

    def __init__(self, fast: int, slow: int, urgent: int, others_every_s: float,
                 busy_for_s: float, topics: frozenset[str],
                 fetcher: Callable[[], Any] = lambda: None) -> None:
        super().__init__(fast, max(fast, slow), busy_for_s, fetcher)
        self.topics = topics
        self.urgent_wait = min(urgent, fast)
        self.others_every_s = others_every_s
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
        other topics while hurried, but let every `others_every_s` one fetch take them
        all. A partition is paused only once it is caught up: what was `fetched` from it
        has been read (aiokafka drops a paused partition's fetched records, to fetch them
        again) and nothing more is known to be there, so a backlog is read at full speed.
        Paused, they keep their positions; a rebalance unpauses them."""
        if not self.others_every_s:
            return
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


async def true_ends(bootstrap: str, ends: Mapping[Any, int]) -> dict[Any, int]:
    """The end offsets `ends` (keyed by (topic, partition) tuples, as the broker reports
    them), extended over the records of each partition's last batch."""
    out = dict(ends)
    tps = {aiokafka.TopicPartition(*tp): tp for tp, end in out.items() if end > 0}
    if not tps:
        return out
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap,
                                         enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        consumer.assign(list(tps))
        for tp, key in tps.items():
            consumer.seek(tp, out[key] - 1)
        pending = set(tps)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batches.items():
                if records:  # a fetch returns the whole batch holding the offset asked for
                    out[tps[tp]] = max(out[tps[tp]], records[-1].offset + 1)
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return out
