"""`POST /v1/completions`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import protocol
from gateway.serving import Renderer, endpoint, finish_reason, routing, serve
from gateway.state import state
from gateway.transcript import Transcript
from schemas.events import ChoiceDelta
from schemas.openai import Completion, CompletionChoice, CompletionRequest

PATH = "/v1/completions"


class CompletionRenderer(Renderer[CompletionChoice]):
    """A text per choice; a stream is its deltas, in the same `text_completion` objects."""

    id_prefix = "cmpl"
    chunk_type = Completion

    def whole(self, t: Transcript) -> Completion:
        return Completion(
            id=self.id, created=self.created, model=self.event.model, usage=self.usage(t),
            choices=[CompletionChoice(text=t.text(i), index=i,
                                      finish_reason=finish_reason(t.finish.get(i)) or "stop")
                     for i in range(self.event.sampling.n)],
        )

    def piece(self, delta: ChoiceDelta) -> str:
        return self.chunk([CompletionChoice(text=delta.text, index=delta.index,
                                            finish_reason=finish_reason(delta.finish_reason))])


@endpoint(PATH)
async def create_completion(request: Request) -> Response:
    body = await protocol.parse(request, CompletionRequest)
    event = protocol.completion_request(body, state(request).settings.max_n,
                                        **routing(request, body.model, body.user))
    return await serve(request, event, CompletionRenderer(event, body.stream_options))


routes = [Route(PATH, create_completion, methods=["POST"])]
