"""`GET /v1/models`: the models with at least one live worker, from their heartbeats."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import authenticate
from gateway.state import state
from schemas.openai import ModelCard, ModelList


async def list_models(request: Request) -> Response:
    st = state(request)
    authenticate(request, st.keys, st.ips)
    served = st.registry.served()
    body = ModelList(data=[
        ModelCard(id=m.name, created=m.since, max_model_len=m.max_model_len) for m in served
    ])
    return Response(body.model_dump_json(), media_type="application/json")


routes = [Route("/v1/models", list_models, methods=["GET"])]
