"""`POST /v1/chat/completions`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import protocol
from gateway.serving import Renderer, endpoint, finish_reason, routing, serve
from gateway.state import state
from gateway.transcript import Transcript
from schemas.events import ChoiceDelta
from schemas.openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Delta,
    ResponseMessage,
)

PATH = "/v1/chat/completions"


class ChatRenderer(Renderer[ChatChunkChoice]):
    """A message per choice; a stream opens with each choice's role, then its deltas."""

    id_prefix = "chatcmpl"
    chunk_type = ChatCompletionChunk

    def whole(self, t: Transcript) -> ChatCompletion:
        return ChatCompletion(
            id=self.id, created=self.created, model=self.event.model, usage=self.usage(t),
            choices=[
                ChatChoice(index=i, message=ResponseMessage(content=t.text(i)),
                           finish_reason=finish_reason(t.finish.get(i)) or "stop")
                for i in range(self.event.sampling.n)
            ],
        )

    def opening(self) -> list[str]:
        return [self.chunk([ChatChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
                for i in range(self.event.sampling.n)]

    def piece(self, delta: ChoiceDelta) -> str:
        fresh = Delta(content=delta.text) if delta.text else Delta()
        return self.chunk([ChatChunkChoice(index=delta.index, delta=fresh,
                                           finish_reason=finish_reason(delta.finish_reason))])


@endpoint(PATH)
async def create_chat_completion(request: Request) -> Response:
    body = await protocol.parse(request, ChatCompletionRequest)
    event = protocol.chat_request(body, state(request).settings.max_n,
                                  **routing(request, body.model, body.user))
    return await serve(request, event, ChatRenderer(event, body.stream_options))


routes = [Route(PATH, create_chat_completion, methods=["POST"])]
