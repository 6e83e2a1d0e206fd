"""Fixtures for the real stack: a broker, the prepared model, workers and gateways.

The broker is Kafka from testcontainers when a Docker engine answers, otherwise the
embedded Tansu broker on a free port. Every process is a real `sluice` child process,
started once per session where it can be shared, and its output goes to
`test-output/<name>.log`.

Every test runs in one lane, marked `unit`, `broker`, `engine` or `e2e` from what its
fixtures start (`pytest_collection_modifyitems` below), so that `make test-fast` can
leave out the model without anyone remembering to mark a new test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker import PROFILES, Broker

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(os.environ.get("SLUICE_TEST_OUTPUT", ROOT / "test-output"))
MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"
ENGINE_START_S = 240.0

# Each lane needs more than the one before it.
LANES = ("unit", "broker", "engine", "e2e")
# The fixtures that bring a lane in; a fixture built on one of them (`streams_app` on
# `bootstrap`, `gateway` on `home`) brings it in too, being in the test's closure.
LANE_FIXTURES = {
    "engine": {"home", "worker", "embedder", "client"},
    "broker": {"bootstrap", "clickhouse"},
}
E2E = ROOT / "tests" / "e2e"


def lane(item: pytest.Item) -> str:
    """The least lane `item` can run in, as far as its place and fixtures tell."""
    if item.path.is_relative_to(E2E):
        return "e2e"
    used = set(getattr(item, "fixturenames", ()))
    for name, fixtures in LANE_FIXTURES.items():
        if used & fixtures:
            return name
    return "unit"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its lane unless it is marked by hand (a test that starts
    processes itself), then refuse any test in no lane, in two, or below its fixtures'."""
    for item in items:
        if not any(m.name in LANES for m in item.iter_markers()):
            item.add_marker(lane(item))
    wrong = []
    for item in items:
        marked = sorted({m.name for m in item.iter_markers() if m.name in LANES})
        needs = lane(item)
        if len(marked) != 1 or LANES.index(marked[0]) < LANES.index(needs):
            wrong.append(f"{item.nodeid}: marked {marked}, its fixtures need {needs}")
    if wrong:
        raise pytest.UsageError("every test runs in exactly one lane, at least the one its "
                                "fixtures need:\n  " + "\n  ".join(wrong))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A `sluice <role>` child in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        OUTPUT.mkdir(exist_ok=True)
        self.name = name
        self.log_path = OUTPUT / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "deploy", *args],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        code = self.popen.poll()
        self.kill()
        self._log.close()
        return code if code is not None else -9


def wait_until(check, timeout: float, what: str, proc: Proc | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited while waiting for {what}:\n"
                                 + proc.log()[-4000:])
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _docker_kafka() -> Iterator[str] | None:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return None
    from testcontainers.kafka import KafkaContainer

    def run() -> Iterator[str]:
        with KafkaContainer().with_kraft() as kafka:
            os.environ["SLUICE_BROKER"] = "kafka"  # for the processes the tests start too
            yield kafka.get_bootstrap_server()

    return run()


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """A Kafka bootstrap address for the whole session."""
    docker = _docker_kafka()
    if docker is not None:
        yield from docker
        return
    port = free_port()
    broker = Proc("broker", ["broker", "--port", str(port)], {})
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None,
                   30, "the broker", broker)
        yield f"127.0.0.1:{port}"
    finally:
        broker.stop(5)


def broker_at(bootstrap: str) -> Broker:
    """The tests' own clients of the session's broker, made as the services make theirs."""
    return Broker(bootstrap, PROFILES[os.environ.get("SLUICE_BROKER", "tansu")])  # type: ignore[index]


@pytest.fixture(scope="session")
def home() -> Path:
    """SLUICE_HOME with the model prepared (`make test` prepares it before pytest)."""
    from inference import models

    path = Path(os.environ.get("SLUICE_HOME", Path.home() / ".cache" / "sluice"))
    for name in (MODEL, EMBEDDING_MODEL):
        models.prepare(path, name, show_progress=False)
    return path


ADMIN_KEY = "sk-admin-test-key"


@pytest.fixture(scope="session")
def streams_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def stack_env(bootstrap: str, home: Path, streams_port: int) -> dict[str, str]:
    return {
        "SLUICE_KAFKA_BOOTSTRAP": bootstrap,
        "SLUICE_HOME": str(home),
        "SLUICE_KV_CACHE_GIB": "1",
        "SLUICE_MAX_NUM_SEQS": "32",
        "SLUICE_SESSION_TIMEOUT_MS": "6000",
        "SLUICE_ADMIN_KEY": ADMIN_KEY,
        "SLUICE_STREAMS_PORT": str(streams_port),
        "SLUICE_STREAMS_URL": f"http://127.0.0.1:{streams_port}",
        "SLUICE_SESSION_TIMEOUT_S": "6",
        # One engine under three names: the A/B tests compare the two aliases.
        "SLUICE_SERVED_NAMES": "smollm2-precise@temperature=0;smollm2-creative@temperature=1.3",
    }


def start_streams(name: str, env: dict[str, str]) -> Proc:
    proc = Proc(name, ["streams"], env)
    url = f"{env['SLUICE_STREAMS_URL']}/ready"
    wait_until(lambda: httpx.get(url, timeout=2).status_code == 200, 120, f"{name} web", proc)
    return proc


@pytest.fixture(scope="session")
def streams(stack_env: dict[str, str]) -> Iterator[Proc]:
    proc = start_streams("streams", stack_env)
    yield proc
    proc.stop(30)


class Gateway:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.url}/v1"

    def ready(self) -> dict[str, object]:
        return httpx.get(f"{self.url}/ready", timeout=5).json()  # type: ignore[no-any-return]

    def live_workers(self, model: str = MODEL) -> int:
        workers = self.ready().get("workers", {})
        return int(workers.get(model, 0))  # type: ignore[union-attr]


def start_gateway(name: str, env: dict[str, str], **settings: str) -> Gateway:
    port = free_port()
    extra = {f"SLUICE_{k.upper()}": v for k, v in settings.items()}
    proc = Proc(name, ["gateway", "--port", str(port)], {**env, **extra})
    gw = Gateway(proc, port)
    wait_until(lambda: httpx.get(f"{gw.url}/health", timeout=2).status_code == 200, 60,
               f"{name} to listen", proc)
    return gw


def start_worker(name: str, env: dict[str, str], gateway: Gateway, expect: int,
                 model: str = MODEL) -> Proc:
    proc = Proc(name, ["worker", "--model", model], {**env, "SLUICE_WORKER_ID": name})
    wait_until(lambda: gateway.live_workers(model) >= expect, ENGINE_START_S,
               f"{name} to send heartbeats", proc)
    return proc


@pytest.fixture(scope="session")
def gateway(stack_env: dict[str, str], streams: Proc) -> Iterator[Gateway]:
    # A small reply topic, so that every test crosses the gateway's moves to fresh ones.
    gw = start_gateway("gateway", stack_env, broker_tuning='{"reply_rotate_records": 200}')
    yield gw
    gw.proc.stop(30)


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], gateway: Gateway) -> Iterator[Proc]:
    proc = start_worker("worker", stack_env, gateway, expect=1)
    yield proc
    proc.stop(60)


@pytest.fixture(scope="session")
def embedder(stack_env: dict[str, str], gateway: Gateway) -> Iterator[Proc]:
    """A worker of the embedding model (it serves no other name)."""
    env = {**stack_env, "SLUICE_SERVED_NAMES": "", "SLUICE_KV_CACHE_GIB": "1"}
    proc = start_worker("embedder", env, gateway, expect=1, model=EMBEDDING_MODEL)
    yield proc
    proc.stop(60)


@pytest.fixture(scope="module")
def gateway_b(stack_env: dict[str, str], gateway: Gateway, worker: Proc) -> Iterator[Gateway]:
    """A second replica on the same broker, with its own reply topic."""
    gw = start_gateway("gateway-b", stack_env, gateway_id="gateway-b")
    wait_until(lambda: gw.live_workers() >= 1, 30, "gateway-b to see the worker", gw.proc)
    yield gw
    gw.proc.stop(30)


def admin(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=30,
                        headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def create_key(gateway: Gateway, tenant: str, **body: object) -> dict[str, object]:
    with admin(gateway) as http:
        r = http.post("/v1/admin/keys", json={"tenant": tenant, **body})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def api_key(gateway: Gateway) -> str:
    """A generous tenant key for tests that are not about limits."""
    return str(create_key(gateway, "tests", tier="enterprise")["secret"])


@pytest.fixture(scope="session")
def client(gateway: Gateway, worker: Proc, api_key: str):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0, timeout=120)
