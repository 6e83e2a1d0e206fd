"""How every Sluice consumer reads the embedded broker (Tansu 0.6, memory storage) whole.

`install()` adjusts aiokafka's fetcher, in every process that reads topics, for two of
the broker's habits; Apache Kafka has neither, so there the adjustments never fire.

- **Holes.** When two or more producers write one partition, a record can become
  visible after the one behind it. A consumer that fetches in between gets the later
  record, moves past the earlier one and never sees it: a lost reply, lease request or
  usage event (about 1 in 2,000 records with 2-4 producers). A fetch response now ends
  at the first hole, so the fetcher asks again from there, for up to `GRACE_S`, before
  it reads on. Only topics that are not compacted are checked: there Kafka never leaves
  a hole (transaction markers come as control batches, which are not holes), while
  compacted topics have holes by design.
- **Slow fetches.** Reading a partition costs the broker about 0.5 ms per 1,000 batches
  in it, and a fetch whose reading outlasts its wait comes back empty, so a consumer
  with a 3 ms wait stops receiving from a partition of some 8,000 batches for good. A
  run of fetches that come back empty from a partition with records past the fetch
  offset now doubles the consumer's wait (up to `STARVED_MAX_FACTOR` times the
  configured one); the wait is halved again after `STARVED_COOLDOWN_S` without need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

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


class _PartitionRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    def __init__(self, tp: TopicPartition, records: Any, aborted: Any, fetch_offset: int,
                 *args: Any) -> None:
        if not _compacted(tp.topic):
            records = _UpToHole(tp, records, fetch_offset)
        super().__init__(tp, records, aborted, fetch_offset, *args)


_fetch = fetcher.Fetcher._proc_fetch_request


async def _proc_fetch_request(self: Any, assignment: Any, node_id: int, request: Any) -> Any:
    """Fetch as aiokafka does; let the fetcher's `after_fetch(assignment, records)`, if it
    has one, pause or resume partitions before the next fetch is made (the streams app
    narrows its fetches so); then, if the broker sent nothing from a partition that has
    records past the fetch offset, double the fetch wait (see `_starved`)."""
    result = await _fetch(self, assignment, node_id, request)
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
    """The embedded broker's other habit: a fetch whose reading outlasts its wait comes
    back empty, and reading grows with the partition (about 0.5 ms per 1,000 batches),
    so a consumer with a short wait stops receiving from a large partition for good."""
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


def install() -> None:
    """Make this process's aiokafka consumers stop at holes and outwait slow fetches
    (idempotent)."""
    fetcher.PartitionRecords = _PartitionRecords
    fetcher.Fetcher._proc_fetch_request = _proc_fetch_request
