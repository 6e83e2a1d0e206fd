"""`sluice worker`: load the engine, then serve requests until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal

from inference.engine import Engine
from inference.settings import Settings
from inference.worker import Worker


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    engine = Engine.start(settings)
    # On a CPU the model runner owns its cores; the Kafka loop and output processing of
    # this process stay off them (sharing them cost TTFT and throughput).
    if settings.pin_frontend and (free := engine.reserved_cpus()):
        os.sched_setaffinity(0, free)
    # What is loaded by now lives as long as the process: keep the collector off it, as
    # vLLM's own server does (a full collection holds every stream up).
    gc.collect()
    gc.freeze()
    try:
        await engine.warm_up()
        if stop.is_set():
            return
        worker = Worker(settings, engine)
        loop.add_signal_handler(signal.SIGTERM, worker.request_stop)
        loop.add_signal_handler(signal.SIGINT, worker.request_stop)
        await worker.run()
    finally:
        engine.shutdown()


def run(settings: Settings | None = None) -> None:
    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uvloop.run(serve(settings or Settings()))
