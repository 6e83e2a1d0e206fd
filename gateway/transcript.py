"""A request's answer as the client sees it, made whole from its token chunks.

If a worker dies its request runs again elsewhere from the start; the transcript skips
the characters the client already has.
"""

from __future__ import annotations

import time
from collections import defaultdict

from schemas.events import ChoiceDelta, TokenChunk, TokenUsage


class Transcript:
    """What a request has answered so far, per choice, as the client sees it."""

    def __init__(self, failover_after_s: float) -> None:
        self.texts: dict[int, list[str]] = defaultdict(list)
        self.lengths: dict[int, int] = defaultdict(int)
        self.finish: dict[int, str] = {}
        self.embeddings: dict[int, str] = {}
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
            if delta.embedding is not None:  # a whole vector, the same in every attempt
                self.embeddings[delta.index] = delta.embedding
                continue
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
