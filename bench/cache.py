"""`make bench-cache`: what an exact cache hit costs, and embeddings through Sluice.

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

Numbers go to docs/benchmarks.md. Run: `python -m bench.cache [--prompts N] [--rounds N]`.
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

from bench.common import cpu, free_port, percentile, sluice, wait_http
from bench.report import write_section
from deploy.supervisor import side_cpus

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
DIMENSIONS = 384
BATCH = 32
EXACT = {"mode": "exact", "ttl_s": 3600}
TARGET_HIT_P50_MS = 5.0
TARGET_EMBED_RATIO = 0.8

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
def _stack(home: Path, model: str) -> Iterator[tuple[str, str]]:
    """Broker, streams, one worker of `model` and one gateway, placed as `sluice up`
    places them; yields the gateway's URL and its admin key."""
    broker_port, streams_port, port = free_port(), free_port(), free_port()
    admin = secrets.token_urlsafe(24)
    env = {"SLUICE_HOME": str(home), "SLUICE_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
           "SLUICE_ADMIN_KEY": admin, "SLUICE_MODELS": model,
           "SLUICE_STREAMS_PORT": str(streams_port),
           "SLUICE_STREAMS_URL": f"http://127.0.0.1:{streams_port}"}
    side = {"SLUICE_CPUS": json.dumps(cpus)} if (cpus := side_cpus()) else {}
    url = f"http://127.0.0.1:{port}"
    services = [sluice("cache-broker", ["broker", "--port", str(broker_port)], {**env, **side})]
    try:
        time.sleep(0.5)
        services.append(sluice("cache-streams", ["streams"], {**env, **side}))
        wait_http(f"http://127.0.0.1:{streams_port}/ready", *services)
        services.append(sluice(f"cache-worker-{model}", ["worker", "--model", model], env))
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
    if status != 200 or state != expect:
        raise RuntimeError(f"{status}, x-sluice-cache: {state} (not {expect}) for {question!r}")


class Httpx:
    """The client the official OpenAI client is built on; keep-alive."""

    def __init__(self, url: str, key: str) -> None:
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
            _check(r.status_code, r.headers.get("x-sluice-cache"), expect, question)
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


# -- the report ------------------------------------------------------------------------


def _row(name: str, values: list[float]) -> str:
    return (f"| {name} | {len(values)} | {statistics.median(values):.2f} | "
            f"{percentile(values, 0.95):.2f} | {percentile(values, 0.99):.2f} | "
            f"{max(values):.2f} |")


def render(hits: dict[str, list[float]], embeds: dict[str, list[float]], prompts: int,
           max_tokens: int, n_batches: int, concurrency: int) -> str:
    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    p50 = {k: statistics.median(v) for k, v in hits.items()}
    lean = max(p50["hit_whole http.client"], p50["hit_ttft http.client"])
    full = max(p50["hit_whole httpx"], p50["hit_ttft httpx"])
    rate = {k: statistics.median(v) for k, v in embeds.items()}
    by_round = ", ".join(f"{s / i:.3f}x" for i, s in
                         zip(embeds["texts"], embeds["sluice"], strict=True))
    rows = [("hit, whole", "hit_whole"), ("hit, streamed: first content", "hit_ttft"),
            ("hit, streamed: `[DONE]`", "hit_stream_end"), ("`GET /health`", "health")]
    return "\n".join([
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {cpu()}, {os.cpu_count()} cores.",
        "",
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
        f"{verdict(lean <= TARGET_HIT_P50_MS)} with `http.client`, "
        f"{verdict(full <= TARGET_HIT_P50_MS)} with httpx).",
        "",
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
        f"{verdict(rate['sluice'] / rate['texts'] >= TARGET_EMBED_RATIO)}); with token ids: "
        f"{rate['sluice'] / rate['token ids']:.3f}x.",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=len(QUESTIONS))
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=4)
    a = p.parse_args()

    from inference.models import prepare
    from inference.settings import Settings

    home = Settings().home
    for model in (CHAT_MODEL, EMBED_MODEL):
        prepare(home, model)
    print("cache hits", flush=True)
    hits = measure_hits(home, a.prompts, a.max_tokens)
    print("embeddings", flush=True)
    embeds = measure_embeddings(home, a.rounds, a.batches, a.concurrency)
    text = render(hits, embeds, a.prompts, a.max_tokens, a.batches, a.concurrency)
    write_section("cache", "Exact cache hits and embeddings", text)
    print(text)


if __name__ == "__main__":
    main()
