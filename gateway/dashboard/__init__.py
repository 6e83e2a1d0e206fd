"""`GET /dashboard`: charts of usage, spend, errors, latency and A/B tests, in the browser.

The page is static files (`static/`) with one vendored chart library (uPlot, MIT; its
licence is beside it), so it works without internet. It asks for a key, keeps it in the
browser's localStorage, and reads everything through the gateway's own API with that key:
the reporting API for the admin or a tenant's key, and the A/B tests for the admin's.

`/dashboard#key=<key>` (or `?key=`) hands it a key without typing it, for scripts and
tests; the page stores it and removes it from the address bar. The fragment is better:
browsers never send it to the server.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"

# The page runs only its own files and talks only to this origin.
HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


routes: list[BaseRoute] = [
    Route("/dashboard", page, methods=["GET"]),
    Mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard"),
]
