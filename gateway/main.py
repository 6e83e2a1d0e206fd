"""`sluice gateway`: serve the app with uvicorn (uvloop, httptools)."""

from __future__ import annotations

import logging
import os

from gateway.settings import Settings


def run(settings: Settings | None = None) -> None:
    import uvicorn

    from gateway.app import create_app

    settings = settings or Settings()
    if settings.cpus:
        os.sched_setaffinity(0, settings.cpus)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        # X-Forwarded-For is believed only from SLUICE_TRUSTED_PROXIES (gateway/auth.py);
        # uvicorn's own handling would believe it from any local peer.
        proxy_headers=False,
        timeout_graceful_shutdown=30,
        log_level="info",
    )
