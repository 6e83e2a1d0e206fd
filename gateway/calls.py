"""One request's round trip: admitted, sent to Kafka, answered from the reply topic.

A `Call` owns what a request holds while it runs (its slot of the model's capacity, its
reply queue) and reports how it ended exactly once, whether it finished, failed, timed
out or lost its client halfway through a stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request

from broker.replies import Pending
from gateway.capacity import Slot
from gateway.exceptions import (
    GatewayTimeout,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    UpstreamError,
)
from gateway.leases import Admitted
from gateway.state import GatewayState
from gateway.transcript import Transcript
from schemas import topics
from schemas.events import (
    CacheState,
    ChoiceDelta,
    InferenceCancelled,
    InferenceRequested,
    RequestCompleted,
    TokenChunk,
)

T = TypeVar("T")

# A request's event must fit a message of Kafka's default size limit (1 MB).
MAX_EVENT_BYTES = 1_000_000


def check_model(st: GatewayState, model: str, task: str = "generate") -> None:
    """Refuse a model nobody serves, or one that does another task than the endpoint's
    (a model not yet heard from is checked again by its worker)."""
    if not st.registry.known(model):
        raise ModelNotFound(
            f"The model '{model}' does not exist or is not served here.", param="model")
    served = st.registry.task(model)
    if served is not None and served != task:
        what = "embeddings" if task == "embed" else "chat or text completions"
        raise InvalidRequest(f"The model '{model}' does not support {what}.", param="model",
                             code="model_not_supported")


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Call:
    def __init__(self, st: GatewayState, request: Request, event: InferenceRequested,
                 endpoint: str, admitted: Admitted, cache: CacheState = "bypass") -> None:
        self.st = st
        self.cache = cache
        self.admitted = admitted
        self.request = request
        self.event = event
        self.endpoint = endpoint
        self.started = request.state.started
        self.transcript = Transcript(st.settings.failover_after_s)
        self.first_token_at: float | None = None
        self._slot: Slot | None = None
        self._pending: Pending | None = None
        self._deadline = time.monotonic() + st.settings.request_timeout
        self._done = False

    @property
    def request_id(self) -> str:
        return self.event.request_id

    async def start(self) -> None:
        """Take a slot of the model's capacity and send the request to its workers."""
        st = self.st
        self._slot = await st.capacity.acquire(self.event.model)
        st.outcomes.metrics.in_flight.labels(self.event.model).inc()
        self.event, self._pending = st.replies.open(self.request_id, self.event)
        value = self.event.encode()
        if len(value) > MAX_EVENT_BYTES:
            raise PayloadTooLarge(
                f"The request is {len(value)} bytes once encoded, over the {MAX_EVENT_BYTES} "
                "a worker takes in one message. Send fewer or shorter inputs.")
        topic = topics.inference(self.event.model, st.settings.inference_partitions).name
        delivery = await st.producer.send(topic, value, key=self.request_id.encode())
        delivery.add_done_callback(self._on_delivery)

    def _on_delivery(self, fut: asyncio.Future[object]) -> None:
        if not fut.cancelled() and fut.exception() is not None and self._pending is not None:
            self._pending.put(UpstreamError(503, "server_error",
                                            "The request could not be queued for a worker.",
                                            param=None, code="broker_unavailable"))

    async def next_chunk(self) -> TokenChunk:
        assert self._pending is not None
        remaining = self._deadline - time.monotonic()
        try:
            chunk = await self._pending.get(timeout=max(0.0, remaining))
        except TimeoutError:
            self.cancel("timeout")
            raise GatewayTimeout(
                f"No answer within {self.st.settings.request_timeout:g}s.") from None
        if chunk.error is not None:
            e = chunk.error
            raise UpstreamError(e.status, e.type, e.message, param=e.param, code=e.code)
        return chunk

    async def deltas(self, first: TokenChunk) -> AsyncIterator[list[ChoiceDelta]]:
        """Fresh text as it arrives, until the final chunk."""
        chunk = first
        while True:
            fresh = self.transcript.accept(chunk)
            if fresh:
                if self.first_token_at is None and any(d.text for d in fresh):
                    self.first_token_at = time.perf_counter()
                yield fresh
            if chunk.final and self.transcript.usage is not None:
                return
            chunk = await self.next_chunk()

    async def collect(self) -> Transcript:
        """The whole answer."""
        async for _ in self.deltas(await self.next_chunk()):
            pass
        return self.transcript

    async def unless_disconnected(self, work: Awaitable[T]) -> T | None:
        """Await `work`, unless the client leaves first: then cancel the request (None)."""
        answer = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(self.request))
        try:
            await asyncio.wait([answer, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not answer.done():
                answer.cancel()
        if answer.cancelled() or not answer.done():
            self.cancel("client_disconnected")
            self.finish(disconnected=True)
            return None
        return answer.result()

    def cancel(self, reason: str) -> None:
        self.st.outcomes.publish(
            topics.INFERENCE_CONTROL,
            InferenceCancelled(request_id=self.request_id, reason=reason),
            self.request_id,
        )

    def finish(self, *, disconnected: bool = False, failed: bool = False) -> None:
        """Release what the request holds and report it; safe to call more than once."""
        if self._done:
            return
        self._done = True
        st = self.st
        self.admitted.release()
        st.replies.close(self.request_id)
        if self._slot is not None:
            self._slot.release()
            st.outcomes.metrics.in_flight.labels(self.event.model).dec()
        if disconnected or failed or self.transcript.usage is not None:
            self._report(499 if disconnected else 500 if failed else 200)

    async def end(self) -> None:
        """`finish`, then wait until a slot it handed back is on the limiter's topic: done
        before the client sees the end, so its next request finds the slot free."""
        self.finish()
        await self.admitted.settled(self.st.settings.lease_timeout_s)

    def _report(self, status: int) -> None:
        t = self.transcript
        reasons = list(t.finish.values())
        now = time.perf_counter()
        ev = self.event
        self.st.outcomes.completed(RequestCompleted(
            request_id=ev.request_id,
            endpoint=self.endpoint,
            model=ev.model,
            key_id=ev.key_id,
            tenant=ev.tenant,
            user=ev.user,
            variant=ev.variant,
            experiment_id=ev.experiment_id,
            status_code=status,
            stream=ev.stream,
            finish_reason=reasons[0] if reasons else None,
            prompt_tokens=t.usage.prompt_tokens if t.usage else 0,
            completion_tokens=t.usage.completion_tokens if t.usage else 0,
            ttft_ms=(self.first_token_at - self.started) * 1000 if self.first_token_at else None,
            latency_ms=(now - self.started) * 1000,
            admitted_at=self.admitted.admitted_at,
            disconnected=status == 499,
            cache=self.cache,
        ))
