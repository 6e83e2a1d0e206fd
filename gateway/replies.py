"""Replies coming back: routed to the request that waits for them.

Each gateway reads its own reply topic: token chunks from workers and lease grants from
the limiter. `ReplyRouter` hands each to the queue of the request that waits for it
(replies nobody waits on any more are dropped unparsed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from schemas import tansu, topics
from schemas.events import (
    AnyEvent,
    InferenceRequested,
    LeaseRequested,
    TokenChunk,
    decode,
)

log = logging.getLogger("sluice.gateway.replies")

E = TypeVar("E", InferenceRequested, LeaseRequested)


class Pending:
    """The replies to one request (token chunks, or a lease grant), in arrival order.

    `topic` is the reply topic the request must name: the one the router read when the
    request was opened.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._queue: asyncio.Queue[AnyEvent | BaseException] = asyncio.Queue()

    def put(self, item: AnyEvent | BaseException) -> None:
        self._queue.put_nowait(item)

    async def get_event(self, timeout: float) -> AnyEvent:
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def readdress(self, event: E) -> E:
        """`event`, naming this request's reply topic (the router may have moved on since
        the event was made)."""
        if event.reply_topic == self.topic:
            return event
        return event.model_copy(update={"reply_topic": self.topic})

    async def get(self, timeout: float) -> TokenChunk:
        item = await self.get_event(timeout)
        assert isinstance(item, TokenChunk)
        return item


class ReplyRouter:
    """Reads this gateway's reply topics and hands each reply to the request waiting for it.

    On the embedded broker (Tansu 0.6, memory storage) a fetch slows as its partition
    grows, and one whose reading outlasts the consumer's wait comes back empty: a reply
    partition of some thousands of batches (about a hundred streamed answers) would stop
    the gateway's replies altogether. So every `rotate_after` replies the router moves to
    a fresh reply topic; new requests name it, and the old one is read until its last
    request has ended, then deleted. 0 never rotates, the setting for Apache Kafka.
    (Its other habit, holes in the offsets, is `schemas.tansu`.)

    The same broker looks for data only at the start of a fetch's wait and at halvings
    of what is left (not at its end), so a reply waits up to about that long. With
    `busy_wait_ms` the router fetches with that shorter wait while a lease grant is
    awaited (and for `busy_for_s` after the last lease request), and with the consumer's
    own wait otherwise. A lease fetch is nothing but its two hops, so it gains the most;
    for streamed answers the faster polling did not lower time to first token
    (measured), and it costs some 4% of a core while on. A short wait needs a short
    partition (reading must fit in it), which rotation keeps.
    """

    def __init__(self, consumer: AIOKafkaConsumer, bootstrap: str, gateway_id: str, *,
                 rotate_after: int = 0, grace_s: float = 5.0, busy_wait_ms: int | None = None,
                 busy_for_s: float = 1.0) -> None:
        self._consumer = consumer
        self._pace = None if busy_wait_ms is None else tansu.Pace(
            busy_wait_ms, consumer._fetch_max_wait_ms, busy_for_s, lambda: consumer._fetcher)
        self._urgent: set[bytes] = set()  # the awaited replies that set the pace
        self._bootstrap = bootstrap
        self._gateway_id = gateway_id
        self._rotate_after = rotate_after
        self._grace_s = grace_s
        self._generation = 0
        self.topic = topics.replies(gateway_id).name
        self._waiting: dict[bytes, Pending] = {}
        self._open: Counter[str] = Counter()
        self._retired: dict[str, float] = {}  # topic -> when it stopped taking requests
        self._next: dict[TopicPartition, int] = {}  # the position in each reply topic
        # The next topic, made ready off the reply path (its metadata alone costs the
        # consumer 100 ms); read from, and named by requests, once this one is full.
        self._upcoming: asyncio.Task[tuple[TopicPartition, int]] | None = None
        self._chores: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._consumer.start()
        # Replies are only for requests made from now on.
        tp, end = await self._new_end(self.topic)
        self._assign({tp: end})

    async def _new_end(self, topic: str) -> tuple[TopicPartition, int]:
        """Where replies to `topic` will start: its end (nothing, unless it is left over
        from an earlier run). Also teaches the consumer where the topic lives."""
        await topics.ensure(self._bootstrap, [topics.TopicSpec(topic, 1)], fixed=False)
        tp = TopicPartition(topic, 0)
        return tp, (await self._consumer.end_offsets([tp]))[tp]

    def _assign(self, positions: dict[TopicPartition, int]) -> None:
        self._consumer.assign(list(positions))
        for tp, offset in positions.items():
            self._consumer.seek(tp, offset)
        self._next = dict(positions)

    def open(self, request_id: str, *, urgent: bool = False) -> Pending:
        """Wait for replies to `request_id`; `urgent` ones are polled for fast."""
        if urgent and self._pace is not None:
            self._urgent.add(request_id.encode())
            self._pace.busy()
        pending = Pending(self.topic)
        self._waiting[request_id.encode()] = pending
        self._open[pending.topic] += 1
        return pending

    def close(self, request_id: str) -> None:
        self._urgent.discard(request_id.encode())
        pending = self._waiting.pop(request_id.encode(), None)
        if pending is not None:
            self._open[pending.topic] -= 1

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    self._route(record)
                self._next[tp] = records[-1].offset + 1
            self._maintain()

    def _route(self, record: ConsumerRecord) -> None:
        pending = self._waiting.get(record.key or b"")
        if pending is None:
            return
        try:
            pending.put(decode(record.value))
        except ValidationError as exc:
            log.error("dropping malformed reply: %s", exc)

    def _maintain(self) -> None:
        """Move to a fresh reply topic when this one is full; drop drained old ones.

        Runs between reads, so the positions in `_next` are the consumer's own.
        """
        filled = self._next.get(TopicPartition(self.topic, 0), 0)
        upcoming = self._upcoming
        if self._rotate_after and filled >= self._rotate_after // 2 and upcoming is None:
            name = topics.replies(self._gateway_id, self._generation + 1).name
            self._upcoming = asyncio.create_task(self._new_end(name))
        elif upcoming is not None and upcoming.done() and filled >= self._rotate_after:
            self._upcoming = None
            if upcoming.exception() is not None:
                log.warning("no fresh reply topic yet: %r", upcoming.exception())
                return
            tp, end = upcoming.result()
            self._assign({**self._next, tp: end})
            self._generation += 1
            self._retired[self.topic] = time.monotonic()
            log.info("replies now on %s (%s had %d)", tp.topic, self.topic, filled)
            self.topic = tp.topic
        now = time.monotonic()
        if self._pace is not None and not self._urgent:
            self._pace.tick()
        done = [t for t, since in self._retired.items()
                if self._open[t] <= 0 and now - since >= self._grace_s]
        if done:
            for t in done:
                del self._retired[t]
                del self._open[t]
            self._assign({tp: pos for tp, pos in self._next.items() if tp.topic not in done})
            chore = asyncio.create_task(topics.delete(self._bootstrap, done))
            self._chores.add(chore)
            chore.add_done_callback(self._chores.discard)

    async def stop(self) -> None:
        for task in (self._upcoming, *self._chores):
            if task is not None:
                task.cancel()
        await self._consumer.stop()
