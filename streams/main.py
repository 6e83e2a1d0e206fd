"""`sluice streams`: run the Faust worker (topics first, then tables recover, then agents)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os

from schemas import topics
from streams.settings import Settings


def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    if settings.cpus:  # before Faust starts its threads, so they stay there too
        os.sched_setaffinity(0, settings.cpus)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(topics.ensure(settings.kafka_bootstrap))
    (settings.home / "streams").mkdir(parents=True, exist_ok=True)  # Faust makes one level
    import faust

    from streams.app import app

    # What is loaded by now lives as long as the process: keep the collector off it (a
    # full collection here took 10-34 ms, lease grants held), as the gateway and worker do.
    gc.collect()
    gc.freeze()
    worker = faust.Worker(app, loglevel="INFO", quiet=True, override_logging=False)
    worker.execute_from_commandline()
