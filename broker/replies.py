"""Replies coming back to a gateway: token chunks and lease grants, each handed to the
request that waits for it (replies nobody waits on any more are dropped unparsed)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from broker.tansu import Pace
from schemas import topics
from schemas.events import AnyEvent, InferenceRequested, LeaseRequested, TokenChunk, decode

if TYPE_CHECKING:
    from broker.clients import Broker

log = logging.getLogger("sluice.broker.replies")

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

    async def get(self, timeout: float) -> TokenChunk:
        item = await self.get_event(timeout)
        assert isinstance(item, TokenChunk)
        return item


class ReplyRouter:
    """Reads this gateway's reply topics and hands each reply to the request waiting for it.

    Two settings exist for the embedded broker (`broker.tansu`), and are off on Kafka:
    every `rotate_after` replies the router moves to a fresh reply topic, because there a
    fetch slows as its partition grows (new requests name the new topic; the old one is
    read until its last request has ended, then deleted); and with `busy_wait_ms` it
    polls with that shorter wait while an urgent reply (a lease grant) is awaited.
    """

    def __init__(self, consumer: AIOKafkaConsumer, broker: Broker, gateway_id: str, *,
                 rotate_after: int = 0, grace_s: float = 5.0, busy_wait_ms: int | None = None,
                 busy_for_s: float = 1.0) -> None:
        self._consumer = consumer
        self._pace = None if busy_wait_ms is None else Pace(
            busy_wait_ms, consumer._fetch_max_wait_ms, busy_for_s, lambda: consumer._fetcher)
        self._urgent: set[bytes] = set()  # the awaited replies that set the pace
        self._broker = broker
        self._gateway_id = gateway_id
        self._rotate_after = rotate_after
        self._grace_s = grace_s
        self._generation = 0
        self.topic = topics.replies(gateway_id).name
        self._waiting: dict[bytes, Pending] = {}
        self._open: Counter[str] = Counter()
        self._retired: dict[str, float] = {}  # topic -> when it stopped taking requests
        self._next: dict[TopicPartition, int] = {}  # the position in each reply topic
        # The next topic, made ready off the reply path (fetching its metadata is slow);
        # read from, and named by requests, once this one is full.
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
        await self._broker.ensure([topics.TopicSpec(topic, 1)], fixed=False)
        tp = TopicPartition(topic, 0)
        return tp, (await self._consumer.end_offsets([tp]))[tp]

    def _assign(self, positions: dict[TopicPartition, int]) -> None:
        self._consumer.assign(list(positions))
        for tp, offset in positions.items():
            self._consumer.seek(tp, offset)
        self._next = dict(positions)

    def open(self, request_id: str, event: E, *, urgent: bool = False) -> tuple[E, Pending]:
        """Wait for replies to `request_id`; returns `event` naming the reply topic they
        will come to, and where they arrive. `urgent` ones are polled for fast."""
        if urgent and self._pace is not None:
            self._urgent.add(request_id.encode())
            self._pace.busy()
        pending = Pending(self.topic)
        self._waiting[request_id.encode()] = pending
        self._open[pending.topic] += 1
        if event.reply_topic != pending.topic:
            event = event.model_copy(update={"reply_topic": pending.topic})
        return event, pending

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
            chore = asyncio.create_task(self._broker.delete(done))
            self._chores.add(chore)
            chore.add_done_callback(self._chores.discard)

    async def stop(self) -> None:
        for task in (self._upcoming, *self._chores):
            if task is not None:
                task.cancel()
        await self._consumer.stop()
