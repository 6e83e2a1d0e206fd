"""The path every inference endpoint shares: admit, ask a worker, answer.

An endpoint is a module of its own: a `Renderer` (how it shows an answer), a handler
marked `@endpoint(path)` that turns its body into an `InferenceRequested`, and its
`routes`. `serve` does the rest: the lease, the round trip, and the response or stream.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from gateway import cache, protocol
from gateway.auth import authenticate
from gateway.calls import Call, check_model
from gateway.keys import Principal
from gateway.state import state
from gateway.streaming import sse
from gateway.transcript import Transcript
from schemas import topics
from schemas.events import ChoiceDelta, InferenceRequested
from schemas.openai import FinishReason, PromptTokensDetails, StreamOptions, Usage

Handler = Callable[[Request], Awaitable[Response]]
Choice = TypeVar("Choice", bound=BaseModel)


def finish_reason(reason: str | None) -> FinishReason | None:
    """A worker's finish reason as OpenAI names it."""
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


class Renderer(Generic[Choice]):
    """How one endpoint shows an answer: whole, or as a stream of SSE documents.

    `serve` asks for `whole` when the request does not stream. A stream is the `opening`
    documents, one `piece` per delta, then the `closing` ones. Stream documents are
    `chunk_type`s made by `chunk`.
    """

    id_prefix: ClassVar[str]  # the response id is `<id_prefix>-<request id>`
    chunk_type: ClassVar[type[BaseModel]]

    def __init__(self, event: InferenceRequested, stream_options: StreamOptions | None
                 ) -> None:
        self.event = event
        self.id = f"{self.id_prefix}-{event.request_id}"
        self.created = int(time.time())
        self.include_usage = bool(stream_options and stream_options.include_usage)

    def whole(self, t: Transcript) -> BaseModel:
        """The response to a request that does not stream."""
        raise NotImplementedError

    def opening(self) -> list[str]:
        """The documents before the first delta."""
        return []

    def piece(self, delta: ChoiceDelta) -> str:
        """The document for one choice's fresh text, or its finish."""
        raise NotImplementedError

    def closing(self, t: Transcript) -> list[str]:
        """The documents after the last delta: the usage chunk, if the client asked for it."""
        return [self.chunk([], self.usage(t))] if self.include_usage else []

    def chunk(self, choices: list[Choice], usage: Usage | None = None) -> str:
        """A stream document; it shows `usage` only to a client that asked for it."""
        chunk = self.chunk_type(id=self.id, created=self.created, model=self.event.model,
                                choices=choices, usage=usage)
        return chunk.model_dump_json(exclude=None if self.include_usage else {"usage"})

    def usage(self, t: Transcript) -> Usage:
        u = t.usage
        prompt, completion = (u.prompt_tokens, u.completion_tokens) if u else (0, 0)
        return Usage(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(
                         cached_tokens=u.cached_tokens if u else 0))


def endpoint(path: str) -> Callable[[Handler], Handler]:
    """Mark a handler as the inference endpoint at `path`.

    Its rejections are recorded as events (`errors.gateway_error` looks for
    `request.state.endpoint`), and it authenticates before anything else, so an
    unauthenticated body is never parsed.
    """
    def mark(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            request.state.endpoint = path
            st = state(request)
            authenticate(request, st.keys, st.ips)
            return await handler(request)

        return wrapped

    return mark


def routing(request: Request, model: str, user: str | None, task: str = "generate"
            ) -> dict[str, object]:
    """What the gateway decides about a request: model (A/B variant), ids and caller."""
    st = state(request)
    principal: Principal = request.state.principal
    route = st.experiments.route(model, user or principal.key_id)
    request.state.route = route
    check_model(st, route.model, task)
    return {
        "model": route.model,
        "variant": route.variant,
        "experiment_id": route.experiment_id,
        "key_id": principal.key_id,
        "tenant": principal.tenant,
        "request_id": request.state.request_id,
        "reply_topic": st.replies.topic,
        "deadline": time.time() + st.settings.request_timeout,
    }


async def serve(request: Request, event: InferenceRequested, renderer: Renderer[Any]
                ) -> Response:
    """Admit `event` against its key's lease, and answer with what `renderer` makes of the
    cached answer or of a worker's reply."""
    st = state(request)
    principal: Principal = request.state.principal
    asked = request.headers.get("cache-control")
    looking = time.perf_counter()
    found = st.cache.lookup(event, principal.cache, asked)
    found = await st.cache.similar(event, found, principal.cache, asked, st.embedder)
    if found.state != "bypass":
        st.outcomes.metrics.cache_lookup.labels(principal.cache.mode, found.state).observe(
            time.perf_counter() - looking)
    hit = found.entry is not None
    admitted = await st.leases.admit(  # a hit is a request too, but it uses no tokens
        principal, 0 if hit else protocol.reservation(event, st.settings.default_reserved_tokens))
    request.state.ratelimit_headers = admitted.headers
    headers = {**admitted.headers, cache.HEADER: found.state}
    event = event.model_copy(update={"reserved_tokens": admitted.tokens,
                                     "reserved_at": admitted.reserved_at})
    call = Call(st, request, event, request.state.endpoint, admitted, cache=found.state)
    if found.entry is not None:
        return await _from_cache(call, found, renderer, headers)
    try:
        await call.start()
        if event.stream:  # wait for the first chunk: an error before it is a plain HTTP error
            first = await call.unless_disconnected(call.next_chunk())
        else:
            done = await call.unless_disconnected(call.collect())
    except BaseException:
        call.finish()
        raise
    if not event.stream:
        if done is None:
            call.finish()
            return Response(status_code=499)
        await call.end()
        st.cache.store(event, found, call.transcript)
        return Response(renderer.whole(call.transcript).model_dump_json(),
                        media_type="application/json", headers=headers)
    if first is None:
        return Response(status_code=499)

    async def events() -> AsyncIterator[str]:
        try:
            for document in renderer.opening():
                yield document
            async for deltas in call.deltas(first):
                for delta in deltas:
                    yield renderer.piece(delta)
            st.cache.store(event, found, call.transcript)
            await call.end()
            for document in renderer.closing(call.transcript):
                yield document
        except (asyncio.CancelledError, GeneratorExit):
            if call.transcript.usage is None:
                call.cancel("client_disconnected")
                call.finish(disconnected=True)
            raise
        except Exception:  # sse() turns it into an error event
            call.cancel("failed")
            call.finish(failed=True)
            raise
        finally:
            call.finish()

    return sse(events(), headers)


async def _from_cache(call: Call, found: cache.Lookup, renderer: Renderer[Any],
                      headers: dict[str, str]) -> Response:
    """The stored answer in the shape a fresh one has, streamed or whole."""
    assert found.entry is not None
    st = call.st
    t = call.transcript = cache.replay(found.entry, 0.0)
    call.first_token_at = time.perf_counter()
    usage = st.cache.hit(call.event, found, (call.first_token_at - call.started) * 1000)
    st.outcomes.publish(topics.USAGE, usage, usage.key_id)
    await call.end()
    if not call.event.stream:
        return Response(renderer.whole(t).model_dump_json(), media_type="application/json",
                        headers=headers)
    pieces = [renderer.piece(ChoiceDelta(index=i, text=t.text(i), finish_reason=t.finish.get(i)))
              for i in range(len(found.entry.choices))]

    async def events() -> AsyncIterator[str]:
        for document in [*renderer.opening(), *pieces, *renderer.closing(t)]:
            yield document

    return sse(events(), headers)
