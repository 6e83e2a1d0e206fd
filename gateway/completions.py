"""`POST /v1/chat/completions` and `POST /v1/completions`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from gateway import protocol
from gateway.auth import authenticate
from gateway.calls import Call, check_model
from gateway.keys import Principal
from gateway.state import state
from gateway.streaming import sse
from schemas.events import ChoiceDelta, InferenceRequested
from schemas.openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    FinishReason,
    ResponseMessage,
    Usage,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _finish(reason: str | None) -> FinishReason | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def _usage(call: Call) -> Usage:
    u = call.transcript.usage
    prompt, completion = (u.prompt_tokens, u.completion_tokens) if u else (0, 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion)


def _route(request: Request, model: str, user: str | None) -> dict[str, object]:
    """What the gateway decides about a request: model (A/B variant), ids and caller."""
    st = state(request)
    principal: Principal = request.state.principal
    route = st.experiments.route(model, user or principal.key_id)
    request.state.route = route
    check_model(st, route.model)
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


def authenticated(handler: Callable[[Request], Awaitable[Response]]
                  ) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate before anything else, so an unauthenticated body is never parsed."""
    async def wrapped(request: Request) -> Response:
        st = state(request)
        authenticate(request, st.keys, st.ips)
        return await handler(request)

    return wrapped


async def _run(
    request: Request,
    endpoint: str,
    event: InferenceRequested,
    whole: Callable[[Call], BaseModel],
    piece: Callable[[ChoiceDelta], str],
    opening: list[str],
    closing: Callable[[Call], str] | None,
) -> Response:
    st = state(request)
    principal: Principal = request.state.principal
    admitted = await st.leases.admit(
        principal, protocol.reservation(event, st.settings.default_reserved_tokens))
    request.state.ratelimit_headers = admitted.headers
    event = event.model_copy(update={"reserved_tokens": admitted.tokens,
                                     "reserved_at": admitted.reserved_at})
    call = Call(st, request, event, endpoint, admitted)
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
        call.finish()
        if done is None:
            return Response(status_code=499)
        return Response(whole(call).model_dump_json(), media_type="application/json",
                        headers=admitted.headers)
    if first is None:
        return Response(status_code=499)

    async def events() -> AsyncIterator[str]:
        try:
            for opener in opening:
                yield opener
            async for deltas in call.deltas(first):
                for delta in deltas:
                    yield piece(delta)
            if closing is not None:
                yield closing(call)
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

    return sse(events(), admitted.headers)


# -- chat ---------------------------------------------------------------------------------


@authenticated
async def chat_completions(request: Request) -> Response:
    body = await protocol.parse(request, ChatCompletionRequest)
    event = protocol.chat_request(body, state(request).settings.max_n,
                                  **_route(request, body.model, body.user))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    created = int(time.time())
    cid = f"chatcmpl-{event.request_id}"

    def whole(call: Call) -> ChatCompletion:
        t = call.transcript
        return ChatCompletion(
            id=cid, created=created, model=event.model, usage=_usage(call),
            choices=[
                ChatChoice(index=i, message=ResponseMessage(content=t.text(i)),
                           finish_reason=_finish(t.finish.get(i)) or "stop")
                for i in range(event.sampling.n)
            ],
        )

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        c = ChatCompletionChunk(id=cid, created=created, model=event.model, choices=choices,
                                usage=usage)
        return c.model_dump_json(exclude=None if include_usage else {"usage"})

    def piece(d: ChoiceDelta) -> str:
        delta = Delta(content=d.text) if d.text else Delta()
        return chunk([ChatChunkChoice(index=d.index, delta=delta,
                                      finish_reason=_finish(d.finish_reason))])

    opening = [chunk([ChatChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
               for i in range(event.sampling.n)]
    closing = (lambda call: chunk([], _usage(call))) if include_usage else None
    return await _run(request, CHAT, event, whole, piece, opening, closing)


# -- completions --------------------------------------------------------------------------


@authenticated
async def completions(request: Request) -> Response:
    body = await protocol.parse(request, CompletionRequest)
    event = protocol.completion_request(body, state(request).settings.max_n,
                                        **_route(request, body.model, body.user))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    created = int(time.time())
    cid = f"cmpl-{event.request_id}"

    def whole(call: Call) -> Completion:
        t = call.transcript
        return Completion(
            id=cid, created=created, model=event.model, usage=_usage(call),
            choices=[CompletionChoice(text=t.text(i), index=i,
                                      finish_reason=_finish(t.finish.get(i)) or "stop")
                     for i in range(event.sampling.n)],
        )

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        c = Completion(id=cid, created=created, model=event.model, choices=choices, usage=usage)
        return c.model_dump_json(exclude=None if include_usage else {"usage"})

    def piece(d: ChoiceDelta) -> str:
        return chunk([CompletionChoice(text=d.text, index=d.index,
                                       finish_reason=_finish(d.finish_reason))])

    closing = (lambda call: chunk([], _usage(call))) if include_usage else None
    return await _run(request, COMPLETIONS, event, whole, piece, [], closing)
