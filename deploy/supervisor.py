"""`sluice up`: the whole stack on one machine, as supervised child processes.

Children start in order (broker, analytics, streams, one worker per model, gateway), each
only once the one before is ready; a new embedded broker first gets back the definitions
the journal kept (`broker.journal`). Their output is prefixed with their role. A child that
crashes is restarted with backoff. Ctrl-C or SIGTERM stops them in reverse order, and each
child runs in a process group of its own that is killed outright if it does not stop in
time, so nothing outlives the supervisor, not even vLLM's engine processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker import Broker, journal, profiles
from deploy.settings import Settings

PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 5
RESTART_WINDOW_S = 120.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class StartupFailed(RuntimeError):
    pass


@dataclass
class Child:
    role: str
    argv: list[str]
    ready: Callable[[Child], Awaitable[None]]
    stop_timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    crashes: list[float] = field(default_factory=list)
    output: asyncio.Task[None] | None = None

    async def spawn(self) -> None:
        self.started_at = time.time()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.output = asyncio.create_task(self._relay_output(self.proc))

    async def _relay_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        prefix = f"{self.role:>10} | ".encode()
        while line := await proc.stdout.readline():
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the child, wait, then SIGKILL its whole process group."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout or self.stop_timeout_s)
            except TimeoutError:
                print(f"supervisor | {self.role} did not stop in time; killing it", flush=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def _wait_port(host: str, port: int, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(child)
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise StartupFailed(f"{child.role} did not open {host}:{port}")


def _check_alive(child: Child) -> None:
    if not child.running:
        code = child.proc.returncode if child.proc else None
        raise StartupFailed(f"{child.role} exited with code {code} while starting")


async def _wait_heartbeat(broker: Broker, worker_id: str, child: Child, timeout: float
                          ) -> None:
    from aiokafka import TopicPartition

    from schemas import topics
    from schemas.events import WorkerHeartbeat

    consumer = broker.reader(broker.profile.control_wait_ms)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _check_alive(child)
            partitions = consumer.partitions_for_topic(topics.WORKERS)
            if not partitions:  # the worker has not created it yet
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.5)
                continue
            tps = [TopicPartition(topics.WORKERS, p) for p in partitions]
            if not consumer.assignment():
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    if r.key == worker_id.encode() and r.value:
                        beat = WorkerHeartbeat.model_validate_json(r.value)
                        if beat.status == "ready" and beat.ts >= child.started_at:
                            return
        raise StartupFailed(f"{child.role} sent no heartbeat within {timeout:g}s")
    finally:
        await consumer.stop()


async def _wait_http_ready(url: str, child: Child, timeout: float) -> None:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(child)
        if await asyncio.to_thread(probe):
            return
        await asyncio.sleep(0.2)
    raise StartupFailed(f"{child.role} was not ready at {url} within {timeout:g}s")


def side_cpus() -> list[int] | None:
    """Where the broker and gateway run on a CPU-only machine: the last core, which vLLM
    leaves free of its model runner. None when there is a GPU or only one core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or os.path.exists("/dev/nvidia0"):
        return None
    return cpus[-1:]


def admin_key(settings: Settings) -> str:
    """SLUICE_ADMIN_KEY, or one made once and kept in SLUICE_HOME/admin_key (mode 0600)."""
    if settings.admin_key:
        return settings.admin_key
    path = settings.admin_key_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("sk-admin-" + secrets.token_urlsafe(24))
    return path.read_text().strip()


async def _restore(broker: Broker, path: Path) -> None:
    """Put what the journal kept back on the new embedded broker's definition topics."""
    contents = await journal.replay(broker, path)
    for problem in contents.problems:
        print(f"supervisor | journal: {problem}", flush=True)
    if contents.records:
        print(f"supervisor | restored {len(contents.records)} definitions (keys, tenants, "
              f"prices, A/B tests) from {path}", flush=True)


def plan(settings: Settings) -> list[Child]:
    """The children of `sluice up`, in start order."""
    me = [sys.executable, "-m", "deploy"]
    bootstrap = settings.bootstrap
    # The embedded broker is Tansu whatever SLUICE_BROKER says; a cluster's kind is given.
    kind = "tansu" if settings.kafka_bootstrap is None else settings.broker
    broker = Broker(bootstrap, profiles.profile(kind, settings.broker_tuning))
    common = {"SLUICE_KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HOME": str(settings.home),
              "SLUICE_BROKER": kind, "SLUICE_MODELS": ",".join(settings.models),
              "PYTHONUNBUFFERED": "1"}
    side = {"SLUICE_CPUS": json.dumps(cpus)} if settings.pin and (cpus := side_cpus()) else {}
    timeout = settings.ready_timeout_s
    children = []
    journaled: dict[str, str] = {}
    if settings.kafka_bootstrap is None:
        async def broker_ready(c: Child) -> None:
            await _wait_port(settings.broker_host, settings.broker_port, c, 30)
            await _restore(broker, settings.journal)

        children.append(Child(
            "broker", [*me, "broker", "--host", settings.broker_host,
                       "--port", str(settings.broker_port)],
            ready=broker_ready, stop_timeout_s=5, env={**common, **side},
        ))
        journaled = {"SLUICE_JOURNAL_PATH": str(settings.journal)}
    # Only the gateway may call the reporting API, and it proves it with this token.
    internal_token = settings.internal_token or secrets.token_urlsafe(32)
    analytics_url = f"http://{settings.analytics_host}:{settings.analytics_port}"
    # With embedded chDB, ready once the sink is consuming, so that the first request after
    # the ready line lands. With a ClickHouse server, alive is enough: an unreachable server
    # makes reporting 503 but must not keep inference from starting.
    embedded = (settings.clickhouse_url or "chdb://").startswith("chdb://")
    children.append(Child(
        "analytics", [*me, "analytics", "--host", settings.analytics_host,
                      "--port", str(settings.analytics_port)],
        ready=lambda c: _wait_http_ready(
            f"{analytics_url}/{'ready' if embedded else 'health'}", c, 120),
        stop_timeout_s=40, env={**common, **side, "SLUICE_INTERNAL_TOKEN": internal_token},
    ))
    # A new embedded broker has no changelogs: the streams app rebuilds its totals from
    # the ledger the analytics process keeps (`streams.restore`).
    restoring = ({"SLUICE_RESTORE_FROM": analytics_url, "SLUICE_INTERNAL_TOKEN": internal_token}
                 if settings.kafka_bootstrap is None else {})
    streams_url = f"http://{settings.streams_host}:{settings.streams_port}"
    children.append(Child(
        "streams", [*me, "streams"],
        ready=lambda c: _wait_http_ready(f"{streams_url}/ready", c, 120),
        stop_timeout_s=20, env={**common, **side, "SLUICE_STREAMS_HOST": settings.streams_host,
                                "SLUICE_STREAMS_PORT": str(settings.streams_port),
                                **restoring},
    ))
    for model in settings.models:
        worker_id = f"{os.uname().nodename}-{model}-up"

        def ready(c: Child, worker_id: str = worker_id) -> Awaitable[None]:
            return _wait_heartbeat(broker, worker_id, c, timeout)

        children.append(Child(
            f"worker:{model}" if len(settings.models) > 1 else "worker",
            [*me, "worker", "--model", model], ready=ready, stop_timeout_s=45,
            env={**common, "SLUICE_WORKER_ID": worker_id},
        ))
    url = f"http://{settings.host}:{settings.port}"
    children.append(Child(
        "gateway", [*me, "gateway", "--host", settings.host, "--port", str(settings.port)],
        ready=lambda c: _wait_http_ready(f"{url}/ready", c, timeout),
        stop_timeout_s=35, env={**common, **side, "SLUICE_STREAMS_URL": streams_url,
                                "SLUICE_ADMIN_KEY": admin_key(settings),
                                "SLUICE_ANALYTICS_URL": analytics_url,
                                "SLUICE_INTERNAL_TOKEN": internal_token, **journaled},
    ))
    return children


async def supervise(settings: Settings) -> int:
    children = plan(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1:  # a second Ctrl-C: no more waiting
            for child in children:
                if child.proc is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.proc.pid, signal.SIGKILL)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    started: list[Child] = []
    code = 0
    try:
        for child in children:
            await child.spawn()
            started.append(child)
            waiting = asyncio.create_task(child.ready(child))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set():
                waiting.cancel()
                return 0
            waiting.result()
        url = f"http://{settings.host}:{settings.port}"
        print(f"Sluice is ready: {url}/v1 (OpenAI base URL), {url}/dashboard; admin key in "
              f"{settings.home / 'admin_key'} unless SLUICE_ADMIN_KEY is set; Ctrl-C stops "
              "everything", flush=True)
        await _keep_running(started, stop)
    except StartupFailed as exc:
        print(f"supervisor | {exc}", flush=True)
        code = 1
    finally:
        for child in reversed(started):
            await child.stop()
    return code


async def _keep_running(children: list[Child], stop: asyncio.Event) -> None:
    """Restart children that die, with backoff, until asked to stop."""
    while not stop.is_set():
        waits = {asyncio.create_task(c.proc.wait()): c for c in children if c.proc}
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, *waits], return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        stopping.cancel()
        if stop.is_set():
            return
        for task in done:
            child = waits.get(task)  # type: ignore[call-overload]
            if child is None:
                continue
            now = time.monotonic()
            child.crashes = [t for t in child.crashes if now - t < RESTART_WINDOW_S] + [now]
            if len(child.crashes) > MAX_RESTARTS:
                raise StartupFailed(f"{child.role} keeps crashing; giving up")
            delay = 2 ** (len(child.crashes) - 1)
            print(f"supervisor | {child.role} exited with code {child.proc.returncode}; "  # type: ignore[union-attr]
                  f"restarting in {delay}s", flush=True)
            await child.stop()
            await asyncio.sleep(delay)
            await child.spawn()
