"""Server-sent events, produced here and nowhere else.

A stream always ends with `data: [DONE]`, after an error event if something failed
midway, and is never compressed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from gateway.exceptions import GatewayError
from schemas.openai import ErrorBody, ErrorResponse

log = logging.getLogger("sluice.gateway.streaming")

DONE = b"data: [DONE]\n\n"


def _error_event(exc: Exception) -> bytes:
    if isinstance(exc, GatewayError):
        body = ErrorBody(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
    else:
        log.exception("stream failed", exc_info=exc)
        body = ErrorBody(message="The stream failed on the server.", type="server_error")
    return b"data: " + ErrorResponse(error=body).model_dump_json().encode() + b"\n\n"


def sse(events: AsyncIterator[str], headers: dict[str, str] | None = None
        ) -> StreamingResponse:
    """Stream JSON documents as SSE `data:` lines."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for data in events:
                yield b"data: " + data.encode() + b"\n\n"
        except Exception as exc:
            yield _error_event(exc)
        yield DONE

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={**(headers or {}), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
