"""`sluice analytics`: the sink and the reporting API, in one process.

With the embedded engine a chDB data path is open in one process only, so this process
owns it: it writes (the sink) and answers (the API). SIGTERM or SIGINT stops it cleanly:
uvicorn stops serving, then the lifespan has the sink land and commit the batch it holds
and leave its consumer group.
"""

from __future__ import annotations

import logging
import os

from analytics.settings import Settings


def run(settings: Settings | None = None) -> None:
    """Serve until SIGTERM/SIGINT (blocking)."""
    import uvicorn

    from analytics.api import create_app

    settings = settings or Settings()
    if settings.cpus:
        os.sched_setaffinity(0, settings.cpus)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    uvicorn.run(
        create_app(settings),
        host=settings.analytics_host,
        port=settings.analytics_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        timeout_graceful_shutdown=10,
        log_level="info",
    )


def seed(rows: int, settings: Settings | None = None, *, days: int = 90,
         show_progress: bool = True) -> None:
    """`sluice analytics seed`: insert `rows` synthetic usage rows (see analytics/seed.py).

    With chDB, run it while `sluice analytics` is stopped: the data path is one process's.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from analytics import seed as seeding
    from analytics.warehouse import Warehouse

    warehouse = Warehouse(settings or Settings())
    try:
        with warehouse.writer() as client, Progress(
                "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), disable=not show_progress) as progress:
            task = progress.add_task("seeding usage rows", total=rows)
            seeding.seed(client, rows, days=days,
                         progress=lambda n: progress.advance(task, n))
    finally:
        warehouse.close()
