"""The analytics tests' harness: caller headers, ClickHouse names and the analytics
process as a real child process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import OUTPUT, ROOT, wait_until

INTERNAL_TOKEN = "test-internal-token"


@dataclass(frozen=True)
class ClickHouse:
    """Where test data lives: a server URL (databases per name) or a chDB root folder."""

    server: str | None
    root: Path

    def dsn(self, name: str) -> str:
        if self.server is not None:
            return f"{self.server}/{name}"
        return f"chdb://{self.root / name}"


def caller(tenant: str | None = None, *, admin: bool = False, key_id: str | None = None,
           token: str | None = INTERNAL_TOKEN) -> dict[str, str]:
    """The headers the gateway adds for a caller."""
    headers = {}
    if token is not None:
        headers["x-sluice-internal-token"] = token
    if tenant is not None:
        headers["x-sluice-tenant"] = tenant
    if key_id is not None:
        headers["x-sluice-key-id"] = key_id
    if admin:
        headers["x-sluice-admin"] = "1"
    return headers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class AnalyticsProc:
    """`python -m analytics` as a child process in its own session, logging to a file."""

    def __init__(self, name: str, env: dict[str, str], port: int) -> None:
        OUTPUT.mkdir(exist_ok=True)
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = OUTPUT / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "analytics"],
            env={**os.environ, **env, "SLUICE_ANALYTICS_PORT": str(port),
                 "PYTHONUNBUFFERED": "1"},
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=ROOT,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kw: object) -> httpx.Response:
        return httpx.get(self.url + path, headers=caller(admin=True), timeout=10, **kw)

    def sql(self, query: str) -> list[list[object]]:
        r = httpx.post(self.url + "/v1/admin/sql", json={"query": query},
                       headers=caller(admin=True), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["data"]  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(lambda: httpx.get(self.url + "/ready", timeout=2).status_code == 200,
                   timeout, f"{self.name} to be ready", self)  # type: ignore[arg-type]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def terminate(self, timeout: float = 30) -> int | None:
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.kill()
            self._log.close()


def analytics_env(clickhouse: ClickHouse, name: str, bootstrap: str, **extra: str
                  ) -> dict[str, str]:
    return {
        "SLUICE_CLICKHOUSE_URL": clickhouse.dsn(name),
        "SLUICE_KAFKA_BOOTSTRAP": bootstrap,
        "SLUICE_ANALYTICS_GROUP": name,
        "SLUICE_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "SLUICE_SESSION_TIMEOUT_MS": "6000",
        "SLUICE_HEARTBEAT_INTERVAL_MS": "500",
        **{f"SLUICE_{k.upper()}": v for k, v in extra.items()},
    }
