"""`sluice up`: the whole stack from one command, ready line, serving, clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil

from deploy.supervisor import side_cpus
from tests.analytics.test_dashboard import _browse, _Page
from tests.conftest import EMBEDDING_MODEL, MODEL, OUTPUT, ROOT, free_port


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _assert_placed(children: list[psutil.Process]) -> None:
    """On a CPU-only machine the broker, streams, gateway and analytics share the core
    that vLLM's model runner leaves free, and stay off the runner's cores."""
    side = side_cpus()
    if side is None:
        return
    side_roles = ("tansu", "Faust:Worker", "deploy streams", "deploy gateway",
                  "deploy analytics")
    placed = [c for c in children if any(r in " ".join(c.cmdline()) for r in side_roles)]
    assert len(placed) >= 4, [c.cmdline() for c in placed]
    for child in placed:
        assert child.cpu_affinity() == side, (child.cmdline(), child.cpu_affinity())
    runners = [c for c in children if c.name().startswith("VLLM::Worker")]
    assert runners, "no model runner process found"
    for runner in runners:
        assert not set(runner.cpu_affinity()) & set(side), runner.cpu_affinity()


def test_up_serves_and_stops_cleanly(home: Path, tmp_path: Path) -> None:
    OUTPUT.mkdir(exist_ok=True)
    port, broker_port = free_port(), free_port()
    env = {**os.environ, "SLUICE_HOME": str(home), "SLUICE_PORT": str(port),
           "SLUICE_BROKER_PORT": str(broker_port), "SLUICE_STREAMS_PORT": str(free_port()),
           "SLUICE_ANALYTICS_PORT": str(free_port()),
           # chDB opens a data path in one process only: not the shared home's.
           "SLUICE_CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}",
           "SLUICE_JOURNAL_PATH": str(tmp_path / "definitions.jsonl"),
           "SLUICE_KV_CACHE_GIB": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("SLUICE_KAFKA_BOOTSTRAP", "SLUICE_ADMIN_KEY", "SLUICE_INTERNAL_TOKEN"):
        env.pop(name, None)
    log = (OUTPUT / "up.log").open("w")
    up = subprocess.Popen([sys.executable, "-m", "deploy", "up"], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    ready_line = None
    children: list[psutil.Process] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 480  # two engines start, one after the other
        for line in up.stdout:
            log.write(line)
            output.append(line)
            if line.startswith("Sluice is ready"):
                ready_line = line
                break
            assert time.monotonic() < deadline, "sluice up was not ready in time"
        assert ready_line is not None, "sluice up exited before it was ready"
        assert f"http://127.0.0.1:{port}/v1" in ready_line
        children = _descendants(up.pid)
        roles = " ".join(" ".join(c.cmdline()) for c in children)
        assert "deploy broker" in roles or "tansu" in roles
        assert "deploy worker" in roles and "deploy gateway" in roles
        assert "deploy analytics" in roles
        _assert_placed(children)

        key = (home / "admin_key").read_text().strip()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                               max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=30,
            messages=[{"role": "user",
                       "content": "What is the capital of France? Answer in English."}])
        assert "Paris" in reply.choices[0].message.content
        _cache_and_embeddings_reach_the_dashboard(
            f"http://127.0.0.1:{port}", f"http://127.0.0.1:{env['SLUICE_STREAMS_PORT']}", key,
            tmp_path)

        up.send_signal(signal.SIGTERM)
        rest = up.communicate(timeout=120)[0]
        log.write(rest)
        output.append(rest)
        assert up.returncode == 0
        text = "".join(output)
        # Each child's lines carry its role.
        for role in ("broker", "streams", "analytics", "gateway"):
            assert f"{role:>10} | " in text
        for model in (MODEL, EMBEDDING_MODEL):  # one worker per model
            assert f"worker:{model} | " in text
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
    time.sleep(1)
    survivors = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], f"orphans left behind: {[c.cmdline() for c in survivors]}"


def _cache_and_embeddings_reach_the_dashboard(root: str, streams: str, admin_key: str,
                                              tmp_path: Path) -> None:
    """Both models are served; a repeated request is a cache hit, billed at the model's
    cache price; the analytics and the dashboard count it, the tokens it saved and what
    that saved net of the hit's price."""
    base, admin = f"{root}/v1", {"Authorization": f"Bearer {admin_key}"}
    price = httpx.put(f"{base}/admin/prices/{MODEL}", headers=admin, timeout=30, json={
        "input_micros_per_million": 1_000_000, "output_micros_per_million": 2_000_000,
        "cache_hit_micros_per_million": 250_000})
    assert price.status_code == 200, price.text
    version = price.json()["versions"][-1]
    deadline = time.monotonic() + 60
    while httpx.get(f"{streams}/prices/{MODEL}", timeout=5).json()["versions"][-1] != version:
        assert time.monotonic() < deadline, "the streams app never saw the price"
        time.sleep(0.5)
    created = httpx.post(f"{base}/admin/keys", timeout=30, headers=admin, json={
        "tenant": "up-cache", "tier": "enterprise", "cache": {"mode": "exact"}})
    assert created.status_code == 201, created.text
    secret, key_id = created.json()["secret"], created.json()["key_id"]
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"model": MODEL, "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Name a colour."}]}
    replies = [httpx.post(f"{base}/chat/completions", json=body, headers=auth, timeout=120)
               for _ in range(2)]
    assert [r.headers["x-sluice-cache"] for r in replies] == ["miss", "hit"]
    usage = replies[0].json()["usage"]
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    hit_cost = (tokens * 250_000 + 500_000) // 1_000_000
    savings = usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2 - hit_cost
    models = httpx.get(f"{base}/models", headers=auth, timeout=30).json()["data"]
    assert {MODEL, EMBEDDING_MODEL} <= {m["id"] for m in models}
    vectors = httpx.post(f"{base}/embeddings", headers=auth, timeout=120,
                         json={"model": EMBEDDING_MODEL, "input": ["red", "blue"]})
    assert vectors.status_code == 200, vectors.text
    assert [len(d["embedding"]) for d in vectors.json()["data"]] == [384, 384]

    want = {"hits": 1, "lookups": 2, "hit_rate": 0.5, "tokens_saved": tokens,
            "hit_cost_micros": hit_cost, "savings_micros": savings, "savings_complete": True}
    deadline, cache = time.monotonic() + 90, None
    while cache != want:  # the request, its usage and its ledger entry land in turn
        assert time.monotonic() < deadline, f"the analytics say {cache}, not {want}"
        time.sleep(1)
        r = httpx.get(f"{base}/analytics", headers=auth, timeout=30)
        cache = r.json().get("cache") if r.status_code == 200 else r.text
    export = httpx.get(f"{base}/usage/export", headers=auth, timeout=30,
                       params={"group_by": "key,model", "format": "json"}).json()
    row = next(r for r in export["data"] if r["model"] == MODEL)
    assert (row["key_id"], row["cache_hits"], row["cache_misses"],
            row["cache_savings_micros"]) == (key_id, 1, 1, savings)

    page = _Page()
    page.feed(_browse(f"{root}/dashboard#key={secret}", tmp_path / "dashboard", "--dump-dom"))
    words = re.sub(r"\s+", " ", " ".join(page.text))
    assert page.state == "ready", words[:600]
    assert "50.00% cache hit rate" in words
    assert f"${savings / 1e6:.4f} cache savings" in words
    assert f"{tokens} tokens saved" in words
