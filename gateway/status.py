"""`/health`, `/ready` and `/metrics`: what the gateway knows about itself."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.state import state


async def health(request: Request) -> Response:
    """The process is alive and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """The broker answers and every configured model has at least one live worker;
    `workers` counts the live workers of every model served, configured or not."""
    st = state(request)
    try:
        await asyncio.wait_for(st.producer.client.fetch_all_metadata(), timeout=2.0)
        broker = True
    except Exception:
        broker = False
    configured = {m: len(st.registry.live(m)) for m in st.settings.models}
    served = {m.name: len(st.registry.live(m.name)) for m in st.registry.served()}
    views = all(v.caught_up.is_set() for v in (st.keys, st.experiments, st.prices, st.cache))
    ok = broker and views and all(configured.values())
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "broker": broker, "views": views,
         "workers": {**served, **configured}},
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "1"},
    )


async def metrics(request: Request) -> Response:
    registry = state(request).outcomes.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
