"""`POST /v1/embeddings`: one vector per input, from a worker of an embedding model."""

from __future__ import annotations

import array
import base64
import sys

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import protocol
from gateway.serving import Renderer, endpoint, routing, serve
from gateway.transcript import Transcript
from schemas.openai import (
    CreateEmbeddingResponse,
    Embedding,
    EmbeddingRequest,
    EmbeddingUsage,
)

PATH = "/v1/embeddings"


def floats(encoded: str) -> list[float]:
    """A worker's vector (base64 of little-endian float32) as JSON numbers."""
    vector = array.array("f", base64.b64decode(encoded))
    if sys.byteorder != "little":
        vector.byteswap()
    return vector.tolist()


class EmbeddingRenderer(Renderer[Embedding]):
    """The vectors in input order; never streamed."""

    id_prefix = "embd"
    chunk_type = CreateEmbeddingResponse

    def __init__(self, event: object, encoding_format: str) -> None:
        super().__init__(event, None)  # type: ignore[arg-type]
        self.base64 = encoding_format == "base64"

    def whole(self, t: Transcript) -> CreateEmbeddingResponse:
        vectors = t.embeddings
        u = t.usage
        prompt = u.prompt_tokens if u else 0
        return CreateEmbeddingResponse(
            model=self.event.model,
            usage=EmbeddingUsage(prompt_tokens=prompt, total_tokens=prompt),
            data=[Embedding(index=i, embedding=vectors[i] if self.base64 else floats(vectors[i]))
                  for i in range(len(self.event.inputs))],
        )


@endpoint(PATH)
async def create_embedding(request: Request) -> Response:
    body = await protocol.parse(request, EmbeddingRequest)
    event = protocol.embedding_request(body, **routing(request, body.model, body.user, "embed"))
    return await serve(request, event, EmbeddingRenderer(event, body.encoding_format))


routes = [Route(PATH, create_embedding, methods=["POST"])]
