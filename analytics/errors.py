"""The edge: every error leaves the reporting API as an OpenAI error body."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from analytics.exceptions import AnalyticsError
from schemas.openai import SERVER_ERROR, ErrorBody, ErrorResponse, routing_error

log = logging.getLogger("sluice.analytics")


def render(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> Response:
    return Response(ErrorResponse(error=body).model_dump_json(), status_code=status,
                    media_type="application/json", headers=headers)


async def analytics_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AnalyticsError)
    if exc.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    headers = {"Retry-After": "2"} if exc.status == 503 else None
    body = ErrorBody(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
    return render(exc.status, body, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = routing_error(exc.status_code, request.method, request.url.path, exc.detail)
    return render(exc.status_code, body, dict(exc.headers or {}))


async def unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return render(500, SERVER_ERROR)
