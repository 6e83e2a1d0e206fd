"""Not reading past a record that is not visible yet.

On the embedded broker (Tansu 0.6, memory storage), when two or more producers write one
partition, a record can become visible after the one behind it. A consumer that fetches
in between gets the later record, moves past the earlier one and never sees it: a lost
reply, lease request or usage event (about 1 in 2,000 records with 2-4 producers).

`install()` makes every aiokafka consumer in the process stop at such a hole and fetch
from it again, for up to `GRACE_S`, before it reads on. It looks only at topics that are
not compacted: there Apache Kafka never leaves a hole in the offsets (transaction markers
come as control batches, which are not holes), so on Kafka this never fires. Compacted
topics have holes by design and are read as they are.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer import fetcher

from schemas import topics

log = logging.getLogger("sluice.kafka")

GRACE_S = 0.5

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


def install() -> None:
    """Make this process's aiokafka consumers stop at holes (idempotent)."""
    fetcher.PartitionRecords = _PartitionRecords
