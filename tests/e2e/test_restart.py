"""`sluice up` on the embedded broker keeps what it is told across a restart, even when
every process of the stack is killed at once (issue 17): keys, tenants, prices and A/B
tests come back from the definitions journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
    """`sluice up` until its ready line; on leaving, SIGKILL of it and every child."""
    OUTPUT.mkdir(exist_ok=True)
    log = (OUTPUT / log_name).open("w")
    up = subprocess.Popen([sys.executable, "-m", "deploy", "up"], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 300
        for line in up.stdout:
            log.write(line)
            log.flush()
            if line.startswith("Sluice is ready"):
                break
            assert time.monotonic() < deadline, "sluice up was not ready in time"
        else:
            raise AssertionError(f"sluice up exited before it was ready: see {log.name}")
        yield up
    finally:
        family = [up, *_descendants(up.pid)]
        for proc in family:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        up.wait(30)
        psutil.wait_procs([p for p in family if isinstance(p, psutil.Process)], timeout=30)
        if up.stdout is not None:
            log.write(up.stdout.read())
        log.close()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_definitions_survive_a_sigkill_of_the_whole_stack(home: Path, tmp_path: Path) -> None:
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
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hi."}]}

    with _up(env, "restart-1.log"):
        with httpx.Client(base_url=base, headers=admin, timeout=60) as http:
            tenant = http.post("/admin/tenants", json={
                "tenant": "durable", "default_tier": "basic",
                "budgets": {"monthly_spend_micros": {"soft": 1_000, "hard": 9_000_000}}})
            assert tenant.status_code == 201, tenant.text
            key = http.post("/admin/keys", json={
                "tenant": "durable", "name": "kept", "limits": {"concurrent": 3},
                "budgets": {"daily_tokens": {"hard": 50_000}},
                "cache": {"mode": "exact", "ttl_s": 900}})
            assert key.status_code == 201, key.text
            revoked = http.post("/admin/keys", json={"tenant": "durable"}).json()
            assert http.delete(f"/admin/keys/{revoked['key_id']}").status_code == 200
            price = http.put(f"/admin/prices/{MODEL}", json={
                "input_micros_per_million": 1_000_000, "output_micros_per_million": 2_000_000})
            assert price.status_code == 200, price.text
            ab = http.post("/admin/ab-tests", json={
                "name": "kept", "model_a": EMBEDDING_MODEL, "model_b": MODEL, "split": 50})
            assert ab.status_code == 201, ab.text
            before = {
                "key": http.get(f"/admin/keys/{key.json()['key_id']}").json(),
                "tenant": http.get("/admin/tenants/durable").json(),
                "prices": http.get("/admin/prices").json(),
                "ab": http.get("/admin/ab-tests").json(),
            }
        secret = key.json()["secret"]
        served = httpx.post(f"{base}/chat/completions", json=body, timeout=120,
                            headers={"Authorization": f"Bearer {secret}"})
        assert served.status_code == 200, served.text
    # Every process of the stack was killed at once; the broker's memory is gone.

    with _up(env, "restart-2.log"):
        with httpx.Client(base_url=base, headers=admin, timeout=60) as http:
            after = {
                "key": http.get(f"/admin/keys/{before['key']['key_id']}").json(),
                "tenant": http.get("/admin/tenants/durable").json(),
                "prices": http.get("/admin/prices").json(),
                "ab": http.get("/admin/ab-tests").json(),
            }
            gone = http.get(f"/admin/keys/{revoked['key_id']}").json()
        assert after == before
        assert gone["revoked"] is True
        again = httpx.post(f"{base}/chat/completions", json=body, timeout=120,
                           headers={"Authorization": f"Bearer {secret}"})
        assert again.status_code == 200, again.text
        refused = httpx.post(f"{base}/chat/completions", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {revoked['secret']}"})
        assert refused.status_code == 401
    log = (OUTPUT / "restart-2.log").read_text()
    assert "restored" in log and "definitions" in log


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
