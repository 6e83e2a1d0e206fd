"""Token chunks coming back: routed to the request that waits for them, then made whole.

Each gateway reads its own reply topic: token chunks from workers and lease grants from
the limiter. `ReplyRouter` hands each to the queue of the request that waits for it
(replies nobody waits on any more are dropped unparsed).
`Transcript` turns a request's chunks into the text the client sees, across worker
attempts: if a worker dies its request runs again elsewhere from the start, and the
characters the client already has are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas.events import AnyEvent, ChoiceDelta, TokenChunk, TokenUsage, decode

log = logging.getLogger("sluice.gateway.replies")


class Pending:
    """The replies to one request (token chunks, or a lease grant), in arrival order."""

    def __init__(self) -> None:
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
    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic
        self._waiting: dict[bytes, Pending] = {}

    async def start(self) -> None:
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self._topic) or {0}
        assigned = [TopicPartition(self._topic, p) for p in partitions]
        self._consumer.assign(assigned)
        # Replies are only for requests made from now on.
        await self._consumer.seek_to_end(*assigned)

    def open(self, request_id: str) -> Pending:
        pending = Pending()
        self._waiting[request_id.encode()] = pending
        return pending

    def close(self, request_id: str) -> None:
        self._waiting.pop(request_id.encode(), None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run(self) -> None:
        consumer = self._consumer
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    pending = self._waiting.get(record.key or b"")
                    if pending is None:
                        continue
                    try:
                        pending.put(decode(record.value))
                    except ValidationError as exc:
                        log.error("dropping malformed reply: %s", exc)

    async def stop(self) -> None:
        await self._consumer.stop()


class Transcript:
    """What a request has answered so far, per choice, as the client sees it."""

    def __init__(self, failover_after_s: float) -> None:
        self.texts: dict[int, list[str]] = defaultdict(list)
        self.lengths: dict[int, int] = defaultdict(int)
        self.finish: dict[int, str] = {}
        self.usage: TokenUsage | None = None
        self._attempt: str | None = None
        self._heard = 0.0
        self._failover_after = failover_after_s

    def accept(self, chunk: TokenChunk) -> list[ChoiceDelta]:
        """The new part of `chunk`, or nothing if it repeats text or comes from a stale attempt.

        The transcript follows one attempt. It moves to another only when the one it
        follows has gone quiet, which is what a dead worker looks like; a live one that
        lost its partition in a rebalance keeps answering and keeps the request.
        """
        now = time.monotonic()
        if self._attempt is None:
            self._attempt = chunk.attempt
        elif chunk.attempt != self._attempt:
            if now - self._heard < self._failover_after:
                return []
            self._attempt = chunk.attempt
        self._heard = now
        fresh = []
        for delta in chunk.choices:
            seen = self.lengths[delta.index]
            text = delta.text[max(0, seen - delta.offset):]
            if text:
                self.texts[delta.index].append(text)
                self.lengths[delta.index] += len(text)
            if delta.finish_reason:
                self.finish[delta.index] = delta.finish_reason
            if text or delta.finish_reason:
                fresh.append(ChoiceDelta(index=delta.index, offset=seen, text=text,
                                         finish_reason=delta.finish_reason))
        if chunk.final and chunk.usage is not None:
            self.usage = chunk.usage
        return fresh

    def text(self, index: int) -> str:
        return "".join(self.texts.get(index, ()))
