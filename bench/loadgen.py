"""A streaming load generator reporting what `vllm bench serve` reports.

TTFT is the time to the first content token; inter-token latency is the gap between
content events; output throughput is completion tokens (from the server's usage) over
the wall time of the run. Requests use fixed prompts at temperature 0, so two servers
running the same engine produce the same tokens and the comparison is like for like.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from dataclasses import dataclass, field

import httpx

PROMPTS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in the morning.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain why the sky is blue, step by step.",
    "Tell the history of the bicycle in many paragraphs.",
    "Describe how bread is made, from wheat to loaf.",
    "Write a short play about two robots meeting in a garden.",
]


@dataclass
class Result:
    ttft: float
    itls: list[float]
    tokens: int


@dataclass
class Report:
    concurrency: int
    requests: int
    duration: float
    results: list[Result] = field(default_factory=list)
    failures: int = 0

    @staticmethod
    def _pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        values = sorted(values)
        return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]

    def summary(self) -> dict[str, float]:
        ttfts = [r.ttft * 1000 for r in self.results]
        itls = [x * 1000 for r in self.results for x in r.itls]
        tokens = sum(r.tokens for r in self.results)
        return {
            "concurrency": self.concurrency,
            "requests": len(self.results),
            "failures": self.failures,
            "ttft_p50_ms": self._pct(ttfts, 50),
            "ttft_p99_ms": self._pct(ttfts, 99),
            "itl_p50_ms": self._pct(itls, 50),
            "itl_p99_ms": self._pct(itls, 99),
            "ttft_mean_ms": statistics.fmean(ttfts) if ttfts else float("nan"),
            "output_tokens_per_s": tokens / self.duration if self.duration else 0.0,
            "output_tokens": tokens,
            "duration_s": self.duration,
        }


async def _one(client: httpx.AsyncClient, url: str, model: str, prompt: str,
               max_tokens: int) -> Result:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    arrivals.append(time.perf_counter())
    if not arrivals:
        raise RuntimeError("no content streamed")
    itls = [b - a for a, b in itertools.pairwise(arrivals)]
    return Result(ttft=arrivals[0] - start, itls=itls, tokens=tokens)


async def run(base_url: str, model: str, concurrency: int, requests: int,
              max_tokens: int = 64, warmup: int = 2, api_key: str | None = None) -> Report:
    url = base_url.rstrip("/") + "/chat/completions"
    limits = httpx.Limits(max_connections=concurrency + 4)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as client:
        for i in range(warmup):
            await _one(client, url, model, PROMPTS[i % len(PROMPTS)], 8)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)
        report = Report(concurrency=concurrency, requests=requests, duration=0.0)

        async def user() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    report.results.append(
                        await _one(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens))
                except Exception:
                    report.failures += 1

        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        report.duration = time.perf_counter() - start
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    a = p.parse_args()
    report = asyncio.run(run(a.base_url, a.model, a.concurrency, a.requests, a.max_tokens,
                             api_key=a.api_key))
    print(json.dumps(report.summary(), indent=1))


if __name__ == "__main__":
    main()
