"""The reporting API, forwarded: usage exports, analytics and admin SQL, answered by the
analytics process (`sluice analytics`) so clients use one base URL and one key.

The gateway authenticates the key, then calls the analytics process with who the caller
is in `x-sluice-*` headers and the internal token that proves the call came from here.
Only a few headers of the client's go along, so a client can never send its own
`x-sluice-*` identity. Answers are streamed through as they come: a large export is never
held here. If the analytics process is down, reporting is 503 and nothing else notices.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.auth import authenticate, require_admin
from gateway.exceptions import ServiceUnavailable
from gateway.keys import Principal
from gateway.settings import Settings
from gateway.state import state
from schemas.reporting import ADMIN, FORWARDED, KEY_ID, TENANT, TOKEN, admin_only

log = logging.getLogger("sluice.gateway.reporting")

# The client's request headers that go along; nothing else does.
PASSED = ("accept", "content-type")
# Response headers that belong to one hop, or that uvicorn sets itself.
HOP = {"connection", "keep-alive", "transfer-encoding", "date", "server", "x-request-id"}

RETRY_AFTER_S = 5


def client(settings: Settings) -> httpx.AsyncClient:
    """The client to the analytics process (built in the app's lifespan)."""
    # A long export may be slow between blocks, but never to connect.
    return httpx.AsyncClient(base_url=settings.analytics_url,
                             timeout=httpx.Timeout(120.0, connect=2.0))


def _identity(principal: Principal, internal_token: str) -> dict[str, str]:
    headers = {TOKEN: internal_token} if internal_token else {}
    if principal.admin:
        headers[ADMIN] = "1"
    else:
        headers[TENANT] = principal.tenant
        headers[KEY_ID] = principal.key_id
    return headers


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()


async def forward(request: Request) -> Response:
    """Authenticate the caller, then stream the analytics process's answer back."""
    st = state(request)
    check = require_admin if admin_only(request.url.path) else authenticate
    principal = check(request, st.keys, st.ips)
    headers = {name: value for name in PASSED if (value := request.headers.get(name))}
    headers.update(_identity(principal, st.settings.internal_token))
    headers["x-request-id"] = request.state.request_id
    headers["accept-encoding"] = "identity"  # bytes pass through as they are
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    body = await request.body() if request.method == "POST" else None
    analytics: httpx.AsyncClient = request.app.state.reporting
    try:
        upstream = await analytics.send(
            analytics.build_request(request.method, target, headers=headers, content=body),
            stream=True)
    except httpx.HTTPError as exc:
        log.warning("analytics unreachable at %s: %r", st.settings.analytics_url, exc)
        raise ServiceUnavailable("Reporting is unavailable right now; inference is not "
                                 "affected. Please retry shortly.", retry_after=RETRY_AFTER_S,
                                 code="analytics_unavailable") from None
    if upstream.status_code == 401:
        # The caller was authenticated here, so this is the gateway's internal token.
        await upstream.aclose()
        log.error("the analytics process refused this gateway's internal token; "
                  "SLUICE_INTERNAL_TOKEN must be the same for both")
        raise ServiceUnavailable("Reporting is misconfigured; please retry later.",
                                 retry_after=RETRY_AFTER_S, code="analytics_unavailable")
    passed = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
    return StreamingResponse(_relay(upstream), status_code=upstream.status_code,
                             headers=passed, background=BackgroundTask(upstream.aclose))


# Every reporting path (`schemas.reporting.FORWARDED`), forwarded.
routes = [Route(f.path, forward, methods=[f.method]) for f in FORWARDED]
