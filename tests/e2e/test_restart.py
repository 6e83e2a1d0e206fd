"""`sluice up` on the embedded broker keeps what it is told across a restart, even when
every process of the stack is killed at once (issue 17): keys, tenants, prices and A/B
tests come back from the definitions journal."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from broker import journal
from schemas import topics
from tests.conftest import (
    ADMIN_KEY,
    EMBEDDING_MODEL,
    MODEL,
    OUTPUT,
    ROOT,
    Proc,
    free_port,
    start_gateway,
)


@contextmanager
def _up(env: dict[str, str], log_name: str) -> Iterator[subprocess.Popen[str]]:
    """`sluice up` until its ready line (its output copied to a log all along); on
    leaving, SIGKILL of it and of every process it started."""
    OUTPUT.mkdir(exist_ok=True)
    up = subprocess.Popen([sys.executable, "-m", "deploy", "up"], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()

    def copy() -> None:
        assert up.stdout is not None
        with (OUTPUT / log_name).open("w") as log:
            for line in up.stdout:
                log.write(line)
                log.flush()
                if line.startswith("Sluice is ready"):
                    ready.set()

    copier = threading.Thread(target=copy, daemon=True)
    copier.start()
    try:
        deadline = time.monotonic() + 300
        while not ready.wait(1):
            assert up.poll() is None, f"sluice up exited before it was ready: see {log_name}"
            assert time.monotonic() < deadline, "sluice up was not ready in time"
        yield up
    finally:
        family = [up, *_descendants(up.pid)]
        for proc in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        up.wait(30)
        psutil.wait_procs([p for p in family if isinstance(p, psutil.Process)], timeout=30)
        copier.join(10)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _usage(base: str, secret: str) -> dict[str, object]:
    """The key's and its tenant's totals for the UTC day and month (`GET /v1/usage`)."""
    out = {}
    for period in ("day", "month"):
        r = httpx.get(f"{base}/usage", params={"period": period}, timeout=30,
                      headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200, r.text
        out[period] = {k: r.json()[k] for k in ("start", "key", "tenant_totals")}
    return out


def _serve_and_settle(base: str, secret: str, requests: int, billed_before: int
                      ) -> dict[str, object]:
    """Serve `requests` chats, then wait until the streams app has billed them and the
    ledger has landed them in ClickHouse; returns the totals then."""
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0.7,
            "messages": [{"role": "user", "content": "Say hi."}]}
    auth = {"Authorization": f"Bearer {secret}"}
    for _ in range(requests):
        r = httpx.post(f"{base}/chat/completions", json=body, timeout=120, headers=auth)
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while True:
        usage = _usage(base, secret)
        # The day's and the month's, the key's and the tenant's: all of it billed (each
        # is read on its own, so a snapshot may catch some before the others).
        seen = [usage[p][who] for p in ("day", "month")  # type: ignore[index]
                for who in ("key", "tenant_totals")]
        landed = httpx.get(f"{base}/usage/export", headers=auth, timeout=30,
                           params={"format": "json", "from": int(time.time()) - 3600})
        cost = landed.json()["totals"]["cost_micros"] if landed.status_code == 200 else -1
        if all(t["requests"] == billed_before + requests and t["cost_micros"] == cost
               for t in seen):
            return usage
        assert time.monotonic() < deadline, (usage, landed.text)
        time.sleep(0.5)


def test_a_restart_keeps_definitions_and_totals(home: Path, tmp_path: Path) -> None:
    """A SIGKILL of every process, then a clean stop: keys (revoked ones too), tenants,
    prices and A/B tests come back from the journal, and each key's and tenant's day and
    month totals (so its quotas and spend) from the ledger, to the request."""
    port = free_port()
    env = {**os.environ, "SLUICE_HOME": str(home), "SLUICE_PORT": str(port),
           "SLUICE_BROKER_PORT": str(free_port()), "SLUICE_STREAMS_PORT": str(free_port()),
           "SLUICE_ANALYTICS_PORT": str(free_port()),
           "SLUICE_CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}",
           "SLUICE_JOURNAL_PATH": str(tmp_path / "definitions.jsonl"),
           "SLUICE_ADMIN_KEY": "sk-admin-restart", "SLUICE_KV_CACHE_GIB": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("SLUICE_KAFKA_BOOTSTRAP", None)
    base = f"http://127.0.0.1:{port}/v1"
    admin = {"Authorization": "Bearer sk-admin-restart"}

    def definitions(http: httpx.Client) -> dict[str, object]:
        return {"key": http.get(f"/admin/keys/{key['key_id']}").json(),
                "tenant": http.get("/admin/tenants/durable").json(),
                "prices": http.get("/admin/prices").json(),
                "ab": http.get("/admin/ab-tests").json()}

    with _up(env, "restart-1.log"), \
            httpx.Client(base_url=base, headers=admin, timeout=60) as http:
        tenant = http.post("/admin/tenants", json={
            "tenant": "durable", "default_tier": "basic",
            "budgets": {"monthly_spend_micros": {"soft": 1_000, "hard": 9_000_000}}})
        assert tenant.status_code == 201, tenant.text
        key = http.post("/admin/keys", json={
            "tenant": "durable", "name": "kept", "limits": {"concurrent": 3},
            "budgets": {"daily_tokens": {"hard": 50_000}},
            "cache": {"mode": "exact", "ttl_s": 900}}).json()
        revoked = http.post("/admin/keys", json={"tenant": "durable"}).json()
        assert http.delete(f"/admin/keys/{revoked['key_id']}").status_code == 200
        price = http.put(f"/admin/prices/{MODEL}", json={
            "input_micros_per_million": 1_000_000, "output_micros_per_million": 2_000_000})
        assert price.status_code == 200, price.text
        ab = http.post("/admin/ab-tests", json={
            "name": "kept", "model_a": EMBEDDING_MODEL, "model_b": MODEL, "split": 50})
        assert ab.status_code == 201, ab.text
        defined = definitions(http)
        time.sleep(1)  # the streams app has the price before the first request is billed
        totals = _serve_and_settle(base, key["secret"], 3, 0)
    # Every process of the stack was killed at once; the broker's memory is gone.

    with _up(env, "restart-2.log") as up, \
            httpx.Client(base_url=base, headers=admin, timeout=60) as http:
        assert definitions(http) == defined
        assert http.get(f"/admin/keys/{revoked['key_id']}").json()["revoked"] is True
        assert _usage(base, key["secret"]) == totals
        refused = httpx.post(f"{base}/chat/completions", timeout=30, json={"model": MODEL},
                             headers={"Authorization": f"Bearer {revoked['secret']}"})
        assert refused.status_code == 401
        totals = _serve_and_settle(base, key["secret"], 1, 3)
        up.send_signal(signal.SIGTERM)  # a clean stop this time
        assert up.wait(150) == 0

    # A damaged journal: reported, skipped, left as it is; the stack starts with the rest.
    journal_file = tmp_path / "definitions.jsonl"
    damaged = b"0badc0de {not a record}\n" + journal_file.read_bytes()
    journal_file.write_bytes(damaged)
    with _up(env, "restart-3.log"), \
            httpx.Client(base_url=base, headers=admin, timeout=60) as http:
        assert definitions(http) == defined
        assert _usage(base, key["secret"]) == totals
    assert journal_file.read_bytes() == damaged
    assert "journal:" in (OUTPUT / "restart-3.log").read_text()
    assert "line 1 is corrupt and was skipped" in (OUTPUT / "restart-3.log").read_text()
    for run in (2, 3):
        log = (OUTPUT / f"restart-{run}.log").read_text()
        assert "restored" in log and "definitions" in log, run
        assert "restored the day and month totals of" in log, run


def test_a_journal_that_cannot_be_written_is_a_clear_error_and_the_gateway_serves_on(
        stack_env: dict[str, str], streams: Proc, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    gw = start_gateway("gateway-journal", stack_env, journal_path=str(blocked / "j.jsonl"))
    try:
        with httpx.Client(base_url=gw.url, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            r = http.post("/v1/admin/tenants", json={"tenant": f"journal-{tmp_path.name}"})
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "journal_unavailable" and "lost" in error["message"]
            assert http.get("/v1/admin/tenants").status_code == 200
        assert httpx.get(f"{gw.url}/health", timeout=5).status_code == 200
    finally:
        gw.proc.stop(30)


def test_the_admin_api_journals_what_it_publishes(
        stack_env: dict[str, str], streams: Proc, tmp_path: Path) -> None:
    path = tmp_path / "definitions.jsonl"
    gw = start_gateway("gateway-journaled", stack_env, journal_path=str(path))
    try:
        with httpx.Client(base_url=gw.url, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            key = http.post("/v1/admin/keys", json={"tenant": f"journal-{tmp_path.name}"})
            assert key.status_code == 201, key.text
        contents = journal.read(path)  # on disk before the answer came
        assert contents.problems == []
        assert [(r.topic, r.key) for r in contents.records] == [  # a new tenant, its key
            (topics.KEYS, f"tenant:journal-{tmp_path.name}".encode()),
            (topics.KEYS, key.json()["key_id"].encode())]
    finally:
        gw.proc.stop(30)
