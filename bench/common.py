"""What every benchmark needs: free ports, `sluice <role>` children, a broker, percentiles."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "test-output" / "bench"

# SIGTERM unwinds like Ctrl-C, so every bench stops the children it started (they run in
# sessions of their own, which a signal to the bench's group does not reach).
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu() -> str:
    """The CPU model, for the report."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), platform.machine())


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Child:
    """A child process in its own session, logging to test-output/bench/<name>.log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = (LOGS / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=ROOT)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited; see {self.log.name}")

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def sluice(name: str, args: list[str], env: dict[str, str]) -> Child:
    """`sluice <args>` as a child."""
    return Child(name, [sys.executable, "-m", "deploy", *args], env)


@contextlib.contextmanager
def broker(name: str = "broker") -> Iterator[str]:
    """The embedded broker on a free port, for the length of the block."""
    port = free_port()
    child = sluice(name, ["broker", "--port", str(port)], {})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            child.check()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        child.stop()


def wait_http(url: str, *children: Child, timeout: float = 300) -> None:
    """Until `url` answers 200. The children must stay alive meanwhile; if one exits or
    time runs out, all of them are stopped (the caller never gets them back to stop)."""
    import httpx

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for child in children:
                child.check()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{url} did not become ready")
    except BaseException:
        for child in reversed(children):
            child.stop()
        raise
