"""The edge: every error leaves as an OpenAI error body, and inference rejections are events."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.exceptions import GatewayError
from gateway.outcomes import elapsed_ms
from schemas.events import RequestRejected
from schemas.openai import SERVER_ERROR, ErrorBody, ErrorResponse, routing_error

log = logging.getLogger("sluice.gateway")


def render(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> Response:
    return Response(ErrorResponse(error=body).model_dump_json(), status_code=status,
                    media_type="application/json", headers=headers)


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    headers = exc.headers
    endpoint = getattr(request.state, "endpoint", None)  # set by `serving.endpoint`
    if endpoint is not None:
        st = request.app.state.gateway
        principal = getattr(request.state, "principal", None)
        route = getattr(request.state, "route", None)
        st.outcomes.rejected(RequestRejected(
            request_id=request.state.request_id,
            endpoint=endpoint,
            model=route.model if route else None,
            key_id=principal.key_id if principal else None,
            tenant=principal.tenant if principal else None,
            variant=route.variant if route else None,
            experiment_id=route.experiment_id if route else None,
            status_code=exc.status,
            error_type=exc.type,
            error_code=exc.code,
            message=exc.message,
            latency_ms=elapsed_ms(request.state.started),
        ))
        headers = {**getattr(request.state, "ratelimit_headers", {}), **headers}
    body = ErrorBody(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
    return render(exc.status, body, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = routing_error(exc.status_code, request.method, request.url.path, exc.detail)
    return render(exc.status_code, body, dict(exc.headers or {}))


async def unexpected(request: Request, exc: Exception) -> Response:
    """Last resort; it runs outside the middleware, so it sets the request id itself."""
    log.exception("unhandled error", exc_info=exc)
    request_id = getattr(request.state, "request_id", None)
    return render(500, SERVER_ERROR, {"x-request-id": request_id} if request_id else None)
