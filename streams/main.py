"""`sluice streams`: run the Faust worker (topics first, then tables recover, then agents)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os

from broker import Broker
from streams.settings import Settings


def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    if settings.cpus:  # before Faust starts its threads, so they stay there too
        os.sched_setaffinity(0, settings.cpus)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(Broker.of(settings).ensure())
    (settings.home / "streams").mkdir(parents=True, exist_ok=True)  # Faust makes one level
    import faust

    from streams.app import app

    # What is loaded by now lives as long as the process: keep the collector off it, as
    # the gateway and worker do (full collections held lease grants up).
    gc.collect()
    gc.freeze()
    worker = faust.Worker(app, loglevel="INFO", quiet=True, override_logging=False)
    worker.execute_from_commandline()
