"""One execution of one request, without I/O: what it has produced, the chunks it answers
with and the usage it bills.

The worker drives it: it feeds in the engine's outputs and produces what comes back. A
redelivered request runs again as a new execution, under a new attempt id.
"""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

from schemas.events import (
    ChoiceDelta,
    InferenceError,
    InferenceRequested,
    TokenChunk,
    TokenUsage,
    UsageRecorded,
    UsageStatus,
    new_id,
)


class ChoiceOutput(Protocol):
    """What is read of one choice in an engine output (vLLM's `CompletionOutput`)."""

    @property
    def index(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> Sequence[int]: ...
    @property
    def finish_reason(self) -> str | None: ...


class EngineOutput(Protocol):
    """What is read of one engine output (vLLM's `RequestOutput`, as deltas)."""

    @property
    def outputs(self) -> Sequence[ChoiceOutput]: ...
    @property
    def finished(self) -> bool: ...
    @property
    def num_cached_tokens(self) -> int | None: ...


# Vectors per chunk of an embedding's answer: 64 of 384 float32 are about 130 KB, well
# under a broker's default message limit of 1 MB.
EMBEDDINGS_PER_CHUNK = 64


class Output:
    """Per-choice text, offsets and token counts of a running request."""

    def __init__(self) -> None:
        self.pending: dict[int, list[str]] = defaultdict(list)
        self.sent: dict[int, int] = defaultdict(int)
        self.tokens: dict[int, int] = defaultdict(int)
        self.finish: dict[int, str | None] = {}
        self.cached = 0

    def add(self, out: EngineOutput) -> None:
        for o in out.outputs:
            self.tokens[o.index] += len(o.token_ids)
            if o.text:
                self.pending[o.index].append(o.text)
            if o.finish_reason:
                self.finish[o.index] = o.finish_reason
        self.cached = out.num_cached_tokens or self.cached

    @property
    def completion_tokens(self) -> int:
        return sum(self.tokens.values())

    def take(self, final: bool = False) -> list[ChoiceDelta]:
        """Everything not yet sent, as deltas; with `final`, one per choice with its reason."""
        indexes = sorted(set(self.pending) | (set(self.finish) if final else set()))
        deltas = []
        for i in indexes:
            text = "".join(self.pending.pop(i, ()))
            reason = self.finish.get(i) if final else None
            if text or reason:
                deltas.append(ChoiceDelta(index=i, offset=self.sent[i], text=text,
                                          finish_reason=reason))
                self.sent[i] += len(text)
        return deltas


class Execution:
    """One request run once: its chunks numbered in order, then the usage it reports.

    It ends one of three ways, each setting `status`: `before_start` declines it, `refuse`
    answers with an error, or `finish` closes what the engine produced.
    """

    def __init__(self, req: InferenceRequested, worker_id: str, *,
                 attempt: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.req = req
        self.worker_id = worker_id
        self.attempt = attempt or new_id()
        self.output = Output()
        self.status: UsageStatus | None = None
        self.received = clock()
        self._clock = clock
        self._seq = 0
        self._first_token_at: float | None = None
        self._usage: TokenUsage | None = None

    def before_start(self, cancelled: bool) -> UsageStatus | None:
        """Whether it ends before it runs: "cancelled" or "expired", else None to run it."""
        if cancelled:
            self.status = "cancelled"
        elif self.req.deadline < self.received:
            self.status = "expired"
        return self.status

    def add(self, out: EngineOutput) -> None:
        """Take in one engine output, noting when the first token came."""
        self.output.add(out)
        if self._first_token_at is None and self.output.completion_tokens:
            self._first_token_at = self._clock()

    def chunk(self) -> TokenChunk | None:
        """The text produced since the last chunk, when the client streams and there is some."""
        if not self.req.stream or not self.output.pending:
            return None
        return self._chunk(self.output.take())

    def refuse(self, error: InferenceError) -> TokenChunk:
        """The final chunk that answers with `error`; the request is billed as failed."""
        self.status = "failed"
        return self._chunk([], final=True, error=error)

    def finish(self, prompt_tokens: int, cancelled: bool) -> TokenChunk | None:
        """The final chunk, one delta per choice with its reason and the usage; none when
        the request was cancelled (nobody waits for it) or the engine aborted it."""
        self._usage = TokenUsage(prompt_tokens=prompt_tokens,
                                 completion_tokens=self.output.completion_tokens,
                                 cached_tokens=self.output.cached)
        if cancelled or "abort" in self.output.finish.values():
            self.status = "cancelled"
            return None
        self.status = "completed"
        return self._chunk(self.output.take(final=True), final=True, usage=self._usage)

    def embedded(self, vectors: Sequence[bytes], prompt_tokens: int) -> list[TokenChunk]:
        """The chunks that answer an embedding: its vectors in input order, a few per
        chunk, the last one with the usage (prompt tokens only)."""
        self._usage = TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=0)
        self.status = "completed"
        deltas = [ChoiceDelta(index=i, embedding=base64.b64encode(v).decode())
                  for i, v in enumerate(vectors)]
        parts = [deltas[i:i + EMBEDDINGS_PER_CHUNK]
                 for i in range(0, len(deltas), EMBEDDINGS_PER_CHUNK)] or [[]]
        return [self._chunk(part, final=n == len(parts) - 1,
                            usage=self._usage if n == len(parts) - 1 else None)
                for n, part in enumerate(parts)]

    def usage(self) -> UsageRecorded:
        """What it reports once ended; its id is the request's, so a redelivery bills once."""
        assert self.status is not None, "usage is known once the execution has ended"
        req, usage = self.req, self._usage  # None unless the engine's run was finished
        reasons = [r for r in self.output.finish.values() if r] if usage else []
        return UsageRecorded(
            event_id=f"usage-{req.request_id}",
            request_id=req.request_id,
            model=req.model,
            key_id=req.key_id,
            tenant=req.tenant,
            user=req.user,
            variant=req.variant,
            experiment_id=req.experiment_id,
            worker_id=self.worker_id,
            status=self.status,
            finish_reason=reasons[0] if reasons else None,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            queue_ms=max(0.0, (self.received - req.ts) * 1000),
            ttft_ms=self._ttft_ms() if usage else None,
            latency_ms=(self._clock() - self.received) * 1000,
            reserved_tokens=req.reserved_tokens,
            reserved_at=req.reserved_at,
        )

    def _ttft_ms(self) -> float | None:
        if self._first_token_at is None:
            return None
        return (self._first_token_at - self.received) * 1000

    def _chunk(self, choices: list[ChoiceDelta], *, final: bool = False,
               usage: TokenUsage | None = None, error: InferenceError | None = None,
               ) -> TokenChunk:
        chunk = TokenChunk(request_id=self.req.request_id, worker_id=self.worker_id,
                           attempt=self.attempt, seq=self._seq, choices=choices, final=final,
                           usage=usage, error=error)
        self._seq += 1
        return chunk
