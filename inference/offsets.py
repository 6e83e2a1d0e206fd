"""Which offsets a worker may commit: never past a request that is still running.

A worker runs many requests from one partition at once and they finish out of order.
Committing only below the oldest unfinished one means that if the worker dies, every
request it had not finished is delivered again to whichever worker takes the partition.
"""

from __future__ import annotations

from collections.abc import Hashable


class OffsetTracker:
    def __init__(self) -> None:
        self._running: dict[Hashable, set[int]] = {}
        self._next: dict[Hashable, int] = {}
        self._committed: dict[Hashable, int] = {}

    def started(self, partition: Hashable, offset: int) -> None:
        self._running.setdefault(partition, set()).add(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def finished(self, partition: Hashable, offset: int) -> None:
        running = self._running.get(partition)
        if running is not None:
            running.discard(offset)

    def done(self, partition: Hashable, offset: int) -> bool:
        """Whether the request at `offset` already finished here (a rebalance can deliver
        again what lies between the committed offset and the newest one)."""
        return offset < self._next.get(partition, 0) and offset not in self._running.get(
            partition, ())

    def running(self, partition: Hashable) -> int:
        return len(self._running.get(partition, ()))

    def safe(self, partition: Hashable) -> int | None:
        """The offset to commit for `partition`: the oldest running one, else the next."""
        if partition not in self._next:
            return None
        running = self._running.get(partition)
        return min(running) if running else self._next[partition]

    def due(self) -> dict[Hashable, int]:
        """Safe offsets that moved since they were last marked committed."""
        out = {}
        for partition in self._next:
            offset = self.safe(partition)
            if offset is not None and offset != self._committed.get(partition):
                out[partition] = offset
        return out

    def mark_committed(self, offsets: dict[Hashable, int]) -> None:
        self._committed.update(offsets)

    def forget(self, partitions: list[Hashable]) -> None:
        """Drop partitions this worker no longer owns, after their last commit."""
        for partition in partitions:
            self._running.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
