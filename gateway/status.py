"""`/health`, `/ready`, `/metrics` and `/v1/models`: what the gateway knows about itself."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import authenticate
from gateway.state import state
from schemas.openai import ModelCard, ModelList


async def health(request: Request) -> Response:
    """The process is alive and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """The broker answers and every configured model has at least one live worker."""
    st = state(request)
    try:
        await asyncio.wait_for(st.producer.client.fetch_all_metadata(), timeout=2.0)
        broker = True
    except Exception:
        broker = False
    models = {m: len(st.registry.live(m)) for m in st.settings.models}
    views = all(v.caught_up.is_set() for v in (st.keys, st.experiments, st.prices))
    ok = broker and views and all(models.values())
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "broker": broker, "views": views,
         "workers": models},
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "1"},
    )


async def metrics(request: Request) -> Response:
    registry = state(request).outcomes.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def models(request: Request) -> Response:
    """Models with at least one live worker, from the workers' heartbeats."""
    st = state(request)
    authenticate(request, st.keys, st.ips)
    served = st.registry.served()
    body = ModelList(data=[
        ModelCard(id=m.name, created=m.since, max_model_len=m.max_model_len) for m in served
    ])
    return Response(body.model_dump_json(), media_type="application/json")
