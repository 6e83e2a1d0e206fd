"""`make bench`: vLLM's own OpenAI server against Sluice, same engine, same model, same load.

Each round starts vLLM's server (`python -m vllm.entrypoints.openai.api_server`, eager
mode) on the prepared model folder, measures concurrency 1 and 16, stops it, then
starts Sluice (broker, one worker with the same engine settings, one gateway) and
measures the same. Rounds alternate so that drift on a shared machine hits both. The
numbers and the ratios go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import loadgen
from bench.common import Child, cpu, free_port, sluice, wait_http
from bench.report import write_section
from deploy.supervisor import side_cpus

MODEL = "smollm2-135m-instruct"
ENGINE = {"max_model_len": 2048, "max_num_seqs": 64, "kv_cache_gib": 2}


def _vllm(folder: str, dtype: str) -> tuple[list[Child], str, str | None]:
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
            "--served-model-name", MODEL, "--enforce-eager", "--dtype", dtype,
            "--max-model-len", str(ENGINE["max_model_len"]),
            "--max-num-seqs", str(ENGINE["max_num_seqs"]), "--port", str(port),
            "--disable-log-stats"]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(ENGINE["kv_cache_gib"])}
    services = [Child("vllm", argv, env)]
    wait_http(f"http://127.0.0.1:{port}/v1/models", *services)
    return services, f"http://127.0.0.1:{port}/v1", None


def _sluice(home: Path, dtype: str) -> tuple[list[Child], str, str | None]:
    """The whole path a request takes: broker, streams (leases), worker, gateway; and an
    enterprise key, whose limits the load stays well inside."""
    broker_port, streams_port, port = free_port(), free_port(), free_port()
    admin = secrets.token_urlsafe(24)
    env = {"SLUICE_HOME": str(home), "SLUICE_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
           "SLUICE_DTYPE": dtype, "SLUICE_MAX_MODEL_LEN": str(ENGINE["max_model_len"]),
           "SLUICE_MAX_NUM_SEQS": str(ENGINE["max_num_seqs"]),
           "SLUICE_KV_CACHE_GIB": str(ENGINE["kv_cache_gib"]), "SLUICE_ADMIN_KEY": admin,
           "SLUICE_STREAMS_PORT": str(streams_port),
           "SLUICE_STREAMS_URL": f"http://127.0.0.1:{streams_port}"}
    # Placed as `sluice up` places them.
    side = {"SLUICE_CPUS": json.dumps(cpus)} if (cpus := side_cpus()) else {}
    services = [sluice("sluice-broker", ["broker", "--port", str(broker_port)],
                       {**env, **side})]
    time.sleep(0.5)
    services.append(sluice("sluice-streams", ["streams"], {**env, **side}))
    wait_http(f"http://127.0.0.1:{streams_port}/ready", *services)
    services.append(sluice("sluice-worker", ["worker", "--model", MODEL], env))
    services.append(sluice("sluice-gateway", ["gateway", "--port", str(port)],
                           {**env, **side}))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ready", *services)
    key = httpx.post(f"{url}/v1/admin/keys", json={"tenant": "bench", "tier": "enterprise"},
                     headers={"Authorization": f"Bearer {admin}"}, timeout=30).json()
    return services, f"{url}/v1", key["secret"]


def _measure(base_url: str, api_key: str | None, loads: list[tuple[int, int]],
             max_tokens: int) -> dict[int, dict]:
    out = {}
    for concurrency, requests in loads:
        report = asyncio.run(loadgen.run(base_url, MODEL, concurrency, requests, max_tokens,
                                         api_key=api_key))
        out[concurrency] = report.summary()
        print(f"  c={concurrency}: " + ", ".join(
            f"{k}={v:.1f}" for k, v in out[concurrency].items() if isinstance(v, float)),
            flush=True)
    return out


def _cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    simd = "AVX-512" if "avx512f" in info else "AVX2" if "avx2" in info else "no AVX2"
    return f"{cpu()} ({simd})"


def _median(runs: list[dict[int, dict]], concurrency: int, key: str) -> float:
    return statistics.median(r[concurrency][key] for r in runs)


def render(results: dict[str, list[dict[int, dict]]], dtype: str, max_tokens: int,
           loads: list[tuple[int, int]]) -> str:
    rounds = len(results["vllm"])
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {_cpu()}, {os.cpu_count()} cores; "
        f"model {MODEL} ({dtype}, eager), "
        f"max_num_seqs {ENGINE['max_num_seqs']}; {max_tokens} output tokens per request, "
        f"temperature 0; {rounds} alternating round(s), medians shown. "
        "vLLM = `python -m vllm.entrypoints.openai.api_server`; Sluice = gateway (bearer "
        "key, admission by lease) -> Kafka (embedded Tansu) -> worker -> Kafka -> gateway, "
        "with the streams app granting leases; same engine settings.",
        "",
        "| concurrency | server | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| output tok/s |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "output_tokens_per_s")
    for concurrency, requests in loads:
        for server in ("vllm", "sluice"):
            cells = " | ".join(f"{_median(results[server], concurrency, k):.1f}" for k in keys)
            lines.append(f"| {concurrency} ({requests} requests) | {server} | {cells} |")
    lines += ["", "| concurrency | Sluice TTFT p50 minus vLLM | Sluice / vLLM throughput |",
              "|---|---|---|"]
    for concurrency, _ in loads:
        added = (_median(results["sluice"], concurrency, "ttft_p50_ms")
                 - _median(results["vllm"], concurrency, "ttft_p50_ms"))
        ratio = (_median(results["sluice"], concurrency, "output_tokens_per_s")
                 / _median(results["vllm"], concurrency, "output_tokens_per_s"))
        lines.append(f"| {concurrency} | {added:+.1f} ms | {ratio:.3f}x |")
    if rounds > 1:
        key = "ttft_p50_ms"
        for concurrency, _ in loads:
            added = ", ".join(f"{s[concurrency][key] - v[concurrency][key]:+.1f}"
                              for v, s in zip(results["vllm"], results["sluice"], strict=True))
            lines += ["", f"TTFT p50 added at concurrency {concurrency}, round by round: "
                      f"{added} ms."]
    lines += ["", "Targets: Sluice adds at most 10 ms to TTFT p50, and keeps at least 0.9x "
              "the direct throughput at concurrency 16."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-c1", type=int, default=48)
    p.add_argument("--requests-c16", type=int, default=64)
    a = p.parse_args()

    from inference.engine import cpu_dtype
    from inference.models import prepare
    from inference.settings import Settings

    home = Settings().home
    folder, _ = prepare(home, MODEL)
    import torch

    dtype = cpu_dtype() if not torch.cuda.is_available() else "auto"
    loads = [(1, a.requests_c1), (16, a.requests_c16)]
    results: dict[str, list[dict[int, dict]]] = {"vllm": [], "sluice": []}
    for round_ in range(a.rounds):
        for name, start in (("vllm", lambda: _vllm(str(folder), dtype)),
                            ("sluice", lambda: _sluice(home, dtype))):
            print(f"round {round_ + 1}: {name}", flush=True)
            services, base_url, api_key = start()
            try:
                results[name].append(_measure(base_url, api_key, loads, a.max_tokens))
            finally:
                for s in reversed(services):
                    s.stop()
    text = render(results, dtype, a.max_tokens, loads)
    write_section("serving", "Serving: Sluice against vLLM's own server", text)
    print(text)


if __name__ == "__main__":
    main()
