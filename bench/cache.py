"""`make bench-cache`: what an exact cache hit and a semantic lookup cost, and embeddings
through Sluice.

1. **Exact cache hits, engine idle.** One stack (broker, streams, one worker of the chat
   model, one gateway) and an enterprise key whose cache policy is `exact`. Each of
   `--prompts` questions is sent once at temperature 0 (the miss: every other one
   streamed, so misses give both a whole latency and a TTFT), then again, one at a time,
   whole and streamed (the hits), by httpx and by `http.client` in turn. Latencies are
   the client's; `GET /health` on the same connection is the floor of HTTP alone.
2. **Embeddings at batch 32.** all-MiniLM-L6-v2 in vLLM's `AsyncLLM` in this process,
   with the worker's engine arguments (`Engine.start`), given texts or token ids,
   against the same model behind Sluice (`POST /v1/embeddings` with 32 inputs, base64
   as the official client asks). Same texts, same number of batches in flight. Rounds
   alternate so that drift on a shared machine hits both, and only one engine runs at
   a time (2 cores).
3. **Semantic lookups.** One stack with a worker of each model (as `sluice up` runs
   them) and two enterprise keys, one `exact` and one `semantic`. Each of
   `--semantic-prompts` questions goes to both keys, one at a time, streamed at
   temperature 0 (which key goes first alternates, so drift and vLLM's prefix cache hit
   both alike): both miss, but the semantic key's miss first embeds the question through
   a worker of the embedding model and searches its scope, which grows by each answer
   stored. What that adds is the difference of the two keys' client-side p50s, and the
   gateway's own `sluice_cache_lookup_seconds` histogram says what the lookup took.

Numbers go to docs/benchmarks.md. Run: `python -m bench.cache [--prompts N] [--rounds N]
[--semantic-prompts N]`; `--only semantic` (or `hits`, `embeddings`; repeatable) runs and
prints some parts and leaves the document alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import http.client
import json
import os
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.common import cpu, free_port, percentile, sluice, wait_http
from bench.report import write_section
from deploy.supervisor import side_cpus

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
DIMENSIONS = 384
BATCH = 32
EXACT = {"mode": "exact", "ttl_s": 3600}
SEMANTIC = {"mode": "semantic", "ttl_s": 3600, "similarity": 0.95}
TARGET_HIT_P50_MS = 5.0
TARGET_EMBED_RATIO = 0.8
TARGET_SEMANTIC_ADDED_MS = 15.0
PARTS = ("hits", "semantic", "embeddings")

TOPICS = [
    "photosynthesis", "the French Revolution", "black holes", "compound interest",
    "the water cycle", "plate tectonics", "vaccines", "the stock market", "volcanoes",
    "the Roman Empire", "electric cars", "honey bees", "the printing press", "rainbows",
    "machine learning", "the moon landing", "coral reefs", "inflation", "the human heart",
    "glaciers", "chess openings", "the Silk Road", "solar panels", "earthquakes",
    "the immune system", "jazz music", "bread baking", "the Great Wall of China",
    "recycling plastic", "tides", "the Olympic Games", "DNA", "hurricanes", "coffee",
    "the internet", "dinosaurs", "sleep", "the Amazon rainforest", "magnets", "democracy",
]
TEMPLATES = [
    "What is {}?",
    "Explain {} to a ten-year-old in two sentences.",
    "Give me three surprising facts about {}.",
    "Why does {} matter for everyday life? Keep it short.",
    "Write one paragraph for a school report on {}, with a title.",
]
QUESTIONS = [t.format(topic) for t in TEMPLATES for topic in TOPICS]  # 200, all different
WORDS = sorted({w.strip("?.,!").lower() for q in QUESTIONS for w in q.split()} - {""})


@contextlib.contextmanager
def _stack(home: Path, *models: str) -> Iterator[tuple[str, str]]:
    """Broker, streams, one worker of each of `models` and one gateway, placed as `sluice
    up` places them; yields the gateway's URL and its admin key."""
    broker_port, streams_port, port = free_port(), free_port(), free_port()
    admin = secrets.token_urlsafe(24)
    env = {"SLUICE_HOME": str(home), "SLUICE_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
           "SLUICE_ADMIN_KEY": admin, "SLUICE_MODELS": ",".join(models),
           "SLUICE_STREAMS_PORT": str(streams_port),
           "SLUICE_STREAMS_URL": f"http://127.0.0.1:{streams_port}"}
    side = {"SLUICE_CPUS": json.dumps(cpus)} if (cpus := side_cpus()) else {}
    url = f"http://127.0.0.1:{port}"
    services = [sluice("cache-broker", ["broker", "--port", str(broker_port)], {**env, **side})]
    try:
        time.sleep(0.5)
        services.append(sluice("cache-streams", ["streams"], {**env, **side}))
        wait_http(f"http://127.0.0.1:{streams_port}/ready", *services)
        for model in models:
            services.append(sluice(f"cache-worker-{model}", ["worker", "--model", model],
                                   env))
        services.append(sluice("cache-gateway", ["gateway", "--port", str(port)],
                               {**env, **side}))
        wait_http(f"{url}/ready", *services)
        yield url, admin
    finally:
        for s in reversed(services):
            s.stop()


def _key(url: str, admin: str, **body: object) -> str:
    """A new tenant's enterprise key (its tier's limits apply), with `body`'s settings."""
    r = httpx.post(f"{url}/v1/admin/keys", timeout=30,
                   json={"tenant": f"bench-{uuid.uuid4().hex[:8]}", "tier": "enterprise", **body},
                   headers={"Authorization": f"Bearer {admin}"})
    r.raise_for_status()
    return str(r.json()["secret"])


# -- 1. cache hits ---------------------------------------------------------------------


def _body(question: str, max_tokens: int, stream: bool) -> bytes:
    return json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": question}],
                       "temperature": 0, "max_tokens": max_tokens, "stream": stream}).encode()


def _content(line: str) -> str:
    """The text in one SSE line of a chat stream ('' if none)."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return ""
    return "".join(c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"])


def _check(status: int, state: str | None, expect: str, question: str) -> None:
    """The request succeeded and the cache answered as `expect` says (`miss|hit`: either)."""
    if status != 200 or state not in expect.split("|"):
        raise RuntimeError(f"{status}, x-sluice-cache: {state} (not {expect}) for {question!r}")


class Httpx:
    """The client the official OpenAI client is built on; keep-alive."""

    def __init__(self, url: str, key: str) -> None:
        self.state: str | None = None  # the last answer's x-sluice-cache
        self.client = httpx.Client(base_url=url, timeout=120,
                                   headers={"Authorization": f"Bearer {key}",
                                            "Content-Type": "application/json"})

    def chat(self, question: str, max_tokens: int, stream: bool, expect: str
             ) -> tuple[float, float, str]:
        """ms to the first content, ms to the end, and the answer's text. The cache must
        have answered as `expect`."""
        t0 = time.perf_counter()
        first, parts = None, []
        with self.client.stream("POST", "/v1/chat/completions",
                                content=_body(question, max_tokens, stream)) as r:
            self.state = r.headers.get("x-sluice-cache")
            _check(r.status_code, self.state, expect, question)
            if not stream:
                r.read()
                end = time.perf_counter()
                return (end - t0) * 1000, (end - t0) * 1000, \
                    r.json()["choices"][0]["message"]["content"]
            for line in r.iter_lines():
                if text := _content(line):
                    first = first or time.perf_counter()
                    parts.append(text)
        end = time.perf_counter()
        return ((first or end) - t0) * 1000, (end - t0) * 1000, "".join(parts)

    def health(self) -> float:
        t0 = time.perf_counter()
        self.client.get("/health").raise_for_status()
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.client.close()


class Lean:
    """The standard library's `http.client`: little work on the client's side, so that
    its times are mostly the gateway's."""

    def __init__(self, url: str, key: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def chat(self, question: str, max_tokens: int, stream: bool, expect: str
             ) -> tuple[float, float, str]:
        t0 = time.perf_counter()
        first, parts = None, []
        self.conn.request("POST", "/v1/chat/completions", _body(question, max_tokens, stream),
                          self.headers)
        r = self.conn.getresponse()
        _check(r.status, r.getheader("x-sluice-cache"), expect, question)
        if not stream:
            data = r.read()
            end = time.perf_counter()
            return (end - t0) * 1000, (end - t0) * 1000, \
                json.loads(data)["choices"][0]["message"]["content"]
        while line := r.readline():
            if text := _content(line.decode().rstrip("\r\n")):
                first = first or time.perf_counter()
                parts.append(text)
        end = time.perf_counter()
        return ((first or end) - t0) * 1000, (end - t0) * 1000, "".join(parts)

    def health(self) -> float:
        t0 = time.perf_counter()
        self.conn.request("GET", "/health")
        self.conn.getresponse().read()
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.conn.close()


def measure_hits(home: Path, prompts: int, max_tokens: int) -> dict[str, list[float]]:
    """Client latencies (ms) of misses and hits of the same questions, one at a time."""
    questions = QUESTIONS[:prompts]
    out: dict[str, list[float]] = collections.defaultdict(list)
    with _stack(home, CHAT_MODEL) as (url, admin):
        key = _key(url, admin, cache=EXACT)
        clients = {"httpx": Httpx(url, key), "http.client": Lean(url, key)}
        first = clients["httpx"]
        try:
            # The first requests after a start are slow (connections, the engine's first
            # batches); these questions are not in the set.
            for i, language in enumerate(["French", "German", "Spanish"]):
                first.chat(f"Say hello in {language}.", max_tokens, i % 2 == 1, "miss")
            answers = []
            for i, question in enumerate(questions):
                ttft, end, text = first.chat(question, max_tokens, i % 2 == 1, "miss")
                if i % 2:
                    out["miss_ttft"].append(ttft)
                    out["miss_stream_end"].append(end)
                else:
                    out["miss_whole"].append(end)
                out["answer_chars"].append(len(text))
                answers.append(text)
            time.sleep(2)  # every answer is in: the engine is idle from here on
            for client in clients.values():
                for i in range(4):
                    client.chat(questions[i], max_tokens, i % 2 == 1, "hit")
            order = list(range(len(questions)))
            random.Random(1).shuffle(order)  # not in the order they were stored
            for i in order:
                for name, client in clients.items():
                    out[f"health {name}"].append(client.health())
                    _, whole, text = client.chat(questions[i], max_tokens, False, "hit")
                    ttft, end, streamed = client.chat(questions[i], max_tokens, True, "hit")
                    if text != answers[i] or streamed != answers[i]:
                        raise RuntimeError(f"a hit differs from its miss: {questions[i]!r}")
                    out[f"hit_whole {name}"].append(whole)
                    out[f"hit_ttft {name}"].append(ttft)
                    out[f"hit_stream_end {name}"].append(end)
        finally:
            for client in clients.values():
                client.close()
    return out


# -- 2. embeddings ---------------------------------------------------------------------


def texts(n: int, seed: int) -> list[str]:
    """`n` sentences of 4 to 60 words, the same for the same seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60))).capitalize() + "."
            for _ in range(n)]


Embed = Callable[[list[str], str], Awaitable[np.ndarray]]


async def _drive(embed: Embed, batches: list[list[str]], warmup: list[list[str]],
                 concurrency: int) -> float:
    """Inputs a second over `batches`, `concurrency` of them in flight, after `warmup`."""
    for i, batch in enumerate(warmup):
        await embed(batch, f"warm-{i}")
    todo = iter(enumerate(batches))

    async def lane() -> None:
        for i, batch in todo:
            vectors = await embed(batch, f"batch-{i}")
            if vectors.shape != (len(batch), DIMENSIONS):
                raise RuntimeError(f"batch {i}: vectors of shape {vectors.shape}")

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return sum(map(len, batches)) / (time.perf_counter() - t0)


async def in_process(batches: list[list[str]], warmup: list[list[str]], concurrency: int
                     ) -> dict[str, float]:
    """vLLM in this process, started as the worker starts it (`Engine.start`). Two ways:
    texts in, as a user of vLLM passes them to `encode`; and the worker's own call
    (`Engine.embed`: tokenized here, token ids to the engine)."""
    from vllm import PoolingParams

    from inference.engine import Engine
    from inference.settings import Settings

    engine = Engine.start(Settings(model=EMBED_MODEL))
    params = PoolingParams(task="embed")
    run = uuid.uuid4().hex[:8]  # request ids stay unique across calls

    async def texts_in(batch: list[str], tag: str) -> np.ndarray:
        async def one(i: int, text: str) -> np.ndarray:
            final = None
            async for out in engine.llm.encode(text, params, f"{run}-{tag}-{i}"):
                final = out
            assert final is not None
            return final.outputs.data.float().numpy()

        return np.stack(await asyncio.gather(*(one(i, t) for i, t in enumerate(batch))))

    async def worker_call(batch: list[str], tag: str) -> np.ndarray:
        ids = [engine.tokenizer.encode(t) for t in batch]
        vectors = await engine.embed(f"{run}-ids-{tag}", ids, None)
        return np.stack([np.frombuffer(v, "<f4") for v in vectors])

    try:
        return {"texts": await _drive(texts_in, batches, warmup, concurrency),
                "token ids": await _drive(worker_call, batches, warmup, concurrency)}
    finally:
        engine.shutdown()


async def through_sluice(url: str, key: str, batches: list[list[str]],
                         warmup: list[list[str]], concurrency: int) -> float:
    """Through the gateway at `url`, as a user of the OpenAI client would call it."""
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        async def embed(batch: list[str], tag: str) -> np.ndarray:
            r = await client.post("/v1/embeddings", json={
                "model": EMBED_MODEL, "input": batch, "encoding_format": "base64"})
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text}")
            return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
                             for d in r.json()["data"]])

        return await _drive(embed, batches, warmup, concurrency)


def measure_embeddings(home: Path, rounds: int, n_batches: int, concurrency: int
                       ) -> dict[str, list[float]]:
    """Inputs a second, round by round, in this process and through Sluice."""
    corpus = texts(BATCH * (n_batches + 2), seed=32)
    batches = [corpus[i:i + BATCH] for i in range(0, len(corpus), BATCH)]
    warmup, batches = batches[:2], batches[2:]
    out: dict[str, list[float]] = collections.defaultdict(list)
    for round_ in range(rounds):
        print(f"round {round_ + 1}: in-process", flush=True)
        for way, rate in asyncio.run(in_process(batches, warmup, concurrency)).items():
            out[way].append(rate)
        print(f"round {round_ + 1}: sluice", flush=True)
        with _stack(home, EMBED_MODEL) as (url, admin):
            key = _key(url, admin)
            out["sluice"].append(asyncio.run(
                through_sluice(url, key, batches, warmup, concurrency)))
        print("  " + ", ".join(f"{k}: {v[-1]:.1f}" for k, v in out.items()), flush=True)
    return out


# -- 3. semantic lookups ---------------------------------------------------------------


LOOKUP = "sluice_cache_lookup_seconds"


def lookup_histogram(url: str) -> dict[tuple[str, str], float]:
    """The gateway's lookup histogram now: (`<mode> <outcome>`, sample) -> value, where the
    sample is `sum`, `count` or a bucket's bound in seconds (`0.015`, `inf`)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name != LOOKUP:
            continue
        for s in family.samples:
            sample = s.name.removeprefix(f"{LOOKUP}_")
            if sample == "bucket":
                sample = f"{float(s.labels['le']):g}"
            elif sample not in ("sum", "count"):
                continue
            out[f"{s.labels['mode']} {s.labels['outcome']}", sample] = s.value
    return out


def bucket_quantile(histogram: dict[tuple[str, str], float], series: str, q: float
                    ) -> float:
    """The `q` quantile (seconds) of one series, interpolated within its bucket as
    Prometheus' `histogram_quantile` does."""
    bounds = sorted((float(sample), v) for (name, sample), v in histogram.items()
                    if name == series and sample not in ("sum", "count"))
    rank = q * histogram[series, "count"]
    lower, below = 0.0, 0.0
    for upper, cumulative in bounds:
        if cumulative >= rank:
            if upper == float("inf") or cumulative == below:
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


def worker_cpu_s(model: str) -> float:
    """CPU seconds used so far by this process's worker of `model`, its engine and model
    runner included."""
    total = 0.0
    for worker in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if worker.cmdline()[-2:] == ["--model", model]:
                for p in (worker, *worker.children(recursive=True)):
                    with contextlib.suppress(psutil.Error):
                        total += sum(p.cpu_times()[:2])
    return total


def measure_semantic(home: Path, prompts: int, max_tokens: int
                     ) -> tuple[dict[str, list[float]], dict[tuple[str, str], float]]:
    """Client latencies (ms) of the two keys' misses of the same questions, the embedding
    worker's CPU time (s), and what the gateway's lookup histogram gained meanwhile."""
    questions = QUESTIONS[:prompts]
    out: dict[str, list[float]] = collections.defaultdict(list)
    with _stack(home, CHAT_MODEL, EMBED_MODEL) as (url, admin):
        clients = {"exact": Httpx(url, _key(url, admin, cache=EXACT)),
                   "semantic": Httpx(url, _key(url, admin, cache=SEMANTIC))}
        expect = {"exact": "miss", "semantic": "miss|hit"}
        try:
            # The embedding worker's first answers can take longer than a lookup waits
            # for one (the lookup then stays exact); these questions are not in the set.
            clients["semantic"].client.post("/v1/embeddings", json={
                "model": EMBED_MODEL, "input": "Are you ready?"}).raise_for_status()
            for language in ["French", "German", "Spanish", "Italian"]:
                for mode, client in clients.items():
                    client.chat(f"Say hello in {language}.", max_tokens, True, expect[mode])
            time.sleep(1.5)  # the embedding worker settles (see render_semantic)
            idle = worker_cpu_s(EMBED_MODEL)
            time.sleep(3)
            out["embedding cpu idle"].append((worker_cpu_s(EMBED_MODEL) - idle) / 3)
            before = lookup_histogram(url)
            cpu0 = worker_cpu_s(EMBED_MODEL)
            for i, question in enumerate(questions):
                pair = {}
                for mode in ("exact", "semantic") if i % 2 == 0 else ("semantic", "exact"):
                    ttft, end, _ = clients[mode].chat(question, max_tokens, True, expect[mode])
                    if clients[mode].state == "hit":  # near an earlier question: no miss
                        out["semantic hits"].append(i)
                        continue
                    out[f"{mode} ttft"].append(ttft)
                    out[f"{mode} end"].append(end)
                    pair[mode] = (ttft, end)
                if len(pair) == 2:
                    out["added ttft"].append(pair["semantic"][0] - pair["exact"][0])
                    out["added end"].append(pair["semantic"][1] - pair["exact"][1])
            out["embedding cpu"].append(worker_cpu_s(EMBED_MODEL) - cpu0)
            after = lookup_histogram(url)
            # The misses were embedded and stored: the same question in lower case is
            # another request to the exact cache but a semantic hit.
            clients["semantic"].chat(questions[0].lower(), max_tokens, True, "hit")
        finally:
            for client in clients.values():
                client.close()
    return out, {k: v - before.get(k, 0.0) for k, v in after.items()}


# -- the report ------------------------------------------------------------------------


def _row(name: str, values: list[float]) -> str:
    return (f"| {name} | {len(values)} | {statistics.median(values):.2f} | "
            f"{percentile(values, 0.95):.2f} | {percentile(values, 0.99):.2f} | "
            f"{max(values):.2f} |")


def render_hits(hits: dict[str, list[float]], prompts: int, max_tokens: int) -> list[str]:
    p50 = {k: statistics.median(v) for k, v in hits.items()}
    lean = max(p50["hit_whole http.client"], p50["hit_ttft http.client"])
    full = max(p50["hit_whole httpx"], p50["hit_ttft httpx"])
    rows = [("hit, whole", "hit_whole"), ("hit, streamed: first content", "hit_ttft"),
            ("hit, streamed: `[DONE]`", "hit_stream_end"), ("`GET /health`", "health")]
    return [
        f"**Exact cache hits, engine idle.** Broker, streams, one worker of {CHAT_MODEL}, "
        f"one gateway; an enterprise key with `cache: exact`. {prompts} different "
        f"questions at temperature 0, `max_tokens` {max_tokens}, each sent once (the miss; "
        "every other one streamed), then again one at a time, whole and streamed (the "
        "hits, in another order, each pair after a `GET /health` on the same keep-alive "
        "connection), by two clients in turn: httpx (what the official OpenAI client is "
        "built on) and the standard library's `http.client` (little work on the client's "
        "side, so its times are mostly the gateway's). Client-side times in ms; answers of "
        f"{p50['answer_chars']:.0f} characters at the median.",
        "",
        "| request | client | n | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
        *(_row(f"{name} | {client}", hits[f"{key} {client}"])
          for name, key in rows for client in ("httpx", "http.client")),
        _row("miss, whole | httpx", hits["miss_whole"]),
        _row("miss, streamed: first content | httpx", hits["miss_ttft"]),
        _row("miss, streamed: `[DONE]` | httpx", hits["miss_stream_end"]),
        "",
        f"- A whole hit answers {p50['miss_whole'] / p50['hit_whole httpx']:.0f}x sooner "
        f"than a whole miss at p50 (httpx); a streamed hit's first content comes "
        f"{p50['miss_ttft'] / p50['hit_ttft httpx']:.1f}x sooner than a miss's.",
        f"- Exact hit, p50 whole / first content: {p50['hit_whole http.client']:.2f} / "
        f"{p50['hit_ttft http.client']:.2f} ms with `http.client`, "
        f"{p50['hit_whole httpx']:.2f} / {p50['hit_ttft httpx']:.2f} ms with httpx "
        f"(target ≤ {TARGET_HIT_P50_MS:g} ms at the gateway: "
        f"{_verdict(lean <= TARGET_HIT_P50_MS)} with `http.client`, "
        f"{_verdict(full <= TARGET_HIT_P50_MS)} with httpx).",
    ]


def render_semantic(sem: dict[str, list[float]], lookups: dict[tuple[str, str], float],
                    prompts: int, max_tokens: int) -> list[str]:
    p50 = {k: statistics.median(v) for k, v in sem.items()}
    added_ttft = p50["semantic ttft"] - p50["exact ttft"]
    added_end = p50["semantic end"] - p50["exact end"]
    hits = len(sem["semantic hits"])
    cpu_ms = sem["embedding cpu"][0] / prompts * 1000
    idle_ms = sem["embedding cpu idle"][0] * 1000

    def gateway_row(mode: str) -> str:
        series = f"{mode} miss"
        n = lookups.get((series, "count"), 0.0)
        if not n:
            return f"| {mode} | 0 | | | |"
        return (f"| {mode} | {n:.0f} | {lookups[series, 'sum'] / n * 1000:.3f} | "
                f"{bucket_quantile(lookups, series, 0.5) * 1000:.3f} | "
                f"{lookups[series, '0.015'] / n:.1%} |")

    return [
        f"**Semantic lookups: what they add to a miss.** Broker, streams, one worker of "
        f"{CHAT_MODEL} and one of {EMBED_MODEL} (as `sluice up` runs them), one gateway; "
        "two enterprise keys (tenants of their own), one with `cache: exact`, one with "
        f"`cache: semantic` (similarity {SEMANTIC['similarity']}). {prompts} different "
        f"questions, each sent to both keys one at a time, streamed at temperature 0, "
        f"`max_tokens` {max_tokens}, httpx; which key goes first alternates. Both keys "
        "miss, but the semantic key's miss first embeds the question (gateway -> Kafka -> "
        "embedding worker -> Kafka -> gateway) and searches its scope for a neighbour; the "
        "scope grows by each answer stored (the warm-up's, then each measured miss's). "
        f"Client-side times in ms; {hits} of the semantic key's questions were hits (an "
        "earlier question near enough) and are left out. Afterwards a measured question "
        "in lower case was a semantic hit, so the misses were embedded and stored.",
        "",
        "| key | request | n | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
        _row("exact | miss: first content", sem["exact ttft"]),
        _row("semantic | miss: first content", sem["semantic ttft"]),
        _row("exact | miss: `[DONE]`", sem["exact end"]),
        _row("semantic | miss: `[DONE]`", sem["semantic end"]),
        "",
        "At the gateway (`sluice_cache_lookup_seconds`, misses of the measured requests; "
        "p50 interpolated within its bucket):",
        "",
        "| key | lookups | mean ms | p50 ms | ≤ 15 ms |",
        "|---|---|---|---|---|",
        gateway_row("exact"),
        gateway_row("semantic"),
        "",
        f"- A semantic lookup adds {added_ttft:.1f} ms to a miss's first content at p50 "
        f"({p50['semantic ttft']:.1f} vs {p50['exact ttft']:.1f} ms; median of the "
        f"per-question differences {p50['added ttft']:.1f} ms) and {added_end:.1f} ms to its "
        f"`[DONE]` (per question {p50['added end']:.1f} ms); target ≤ "
        f"{TARGET_SEMANTIC_ADDED_MS:g} ms: {_verdict(added_ttft <= TARGET_SEMANTIC_ADDED_MS)}.",
        f"- The embedding worker (engine and model runner included) used {cpu_ms:.0f} ms of "
        f"CPU per semantic request, each embedding one short question (idle, it uses "
        f"{idle_ms:.0f} ms a second). vLLM's model runner polls for its next step for a "
        "second after each one (`shm_broadcast`'s busy loop), and on a CPU vLLM binds "
        "every engine's model runner to the cores but the last, here the same single core "
        "for both models: a chat submitted right after its embedding shares that core "
        "with the polling, the likely cause of most of what the client sees beyond the lookup.",
    ]


def render_embeddings(embeds: dict[str, list[float]], n_batches: int, concurrency: int
                      ) -> list[str]:
    rate = {k: statistics.median(v) for k, v in embeds.items()}
    by_round = ", ".join(f"{s / i:.3f}x" for i, s in
                         zip(embeds["texts"], embeds["sluice"], strict=True))
    return [
        f"**Embeddings at batch {BATCH}.** {EMBED_MODEL}, {n_batches} batches of {BATCH} "
        f"sentences of 4-60 words, {concurrency} batches in flight, after 2 batches of "
        "warm-up. In-process: vLLM's `AsyncLLM` in the bench's process, started with the "
        "worker's engine arguments (`Engine.start`), given texts (one `encode` per text, "
        "as a user of vLLM calls it) or token ids (the worker's own call, `Engine.embed`, "
        "tokenizing first). Sluice: gateway -> Kafka -> worker -> Kafka -> gateway, "
        f"`POST /v1/embeddings` with {BATCH} inputs and `encoding_format: base64` (as the "
        f"official client asks), vectors decoded by the client. {len(embeds['sluice'])} "
        "alternating round(s), medians shown; only one engine runs at a time.",
        "",
        "| path | inputs/s | round by round |",
        "|---|---|---|",
        *(f"| {name} | {rate[key]:.1f} | {', '.join(f'{v:.1f}' for v in embeds[key])} |"
          for name, key in (("in-process, texts", "texts"),
                            ("in-process, token ids", "token ids"), ("Sluice", "sluice"))),
        "",
        f"- Sluice / in-process with texts: {rate['sluice'] / rate['texts']:.3f}x (round by "
        f"round: {by_round}; target ≥ {TARGET_EMBED_RATIO:g}x: "
        f"{_verdict(rate['sluice'] / rate['texts'] >= TARGET_EMBED_RATIO)}); with token ids: "
        f"{rate['sluice'] / rate['token ids']:.3f}x.",
    ]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(parts: list[list[str]]) -> str:
    """The parts that ran, under one line saying when and where."""
    lines = [f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {cpu()}, {os.cpu_count()} cores."]
    for part in parts:
        lines += ["", *part]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=len(QUESTIONS))
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--semantic-prompts", type=int, default=len(QUESTIONS))
    p.add_argument("--semantic-max-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--only", action="append", choices=PARTS,
                   help="run this part only (repeatable); prints, leaves docs/ alone")
    a = p.parse_args()

    from inference.models import prepare
    from inference.settings import Settings

    home = Settings().home
    for model in (CHAT_MODEL, EMBED_MODEL):
        prepare(home, model)
    run = a.only or PARTS
    parts = []
    if "hits" in run:
        print("cache hits", flush=True)
        hits = measure_hits(home, a.prompts, a.max_tokens)
        parts.append(render_hits(hits, a.prompts, a.max_tokens))
    if "semantic" in run:
        print("semantic lookups", flush=True)
        sem, lookups = measure_semantic(home, a.semantic_prompts, a.semantic_max_tokens)
        parts.append(render_semantic(sem, lookups, a.semantic_prompts, a.semantic_max_tokens))
    if "embeddings" in run:
        print("embeddings", flush=True)
        embeds = measure_embeddings(home, a.rounds, a.batches, a.concurrency)
        parts.append(render_embeddings(embeds, a.batches, a.concurrency))
    text = render(parts)
    if not a.only:
        write_section("cache", "The response cache and embeddings", text)
    print(text)


if __name__ == "__main__":
    main()
