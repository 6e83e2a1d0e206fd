"""Events for the analytics tests, shaped like the stack publishes them, and what a correct
analytics store must then say about them."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from schemas import topics
from schemas.events import (
    AnyEvent,
    CacheHit,
    LedgerEntry,
    RequestCompleted,
    RequestRejected,
    UsageRecorded,
)
from tests.conftest import broker_at

# Micro-dollars a token: the price every model of this traffic has (version 1).
PROMPT_MICROS, COMPLETION_MICROS, HIT_MICROS = 2, 5, 1


@dataclass
class Expected:
    requests: int = 0
    errors: int = 0
    usage: int = 0
    ledger: int = 0
    cache_hits: int = 0
    cache_lookups: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    saved_tokens: int = 0  # what cache hits answered, prompt and completion
    hit_cost_micros: int = 0  # what they were billed
    savings_micros: int = 0  # their tokens at the fresh price, less that
    by_model: dict[str, int] = field(default_factory=dict)  # requests per model
    by_key: dict[str, int] = field(default_factory=dict)  # cost per key


@dataclass
class Traffic:
    """(topic, event) pairs in publishing order, and the totals they should add up to."""

    tenant: str
    events: list[tuple[str, AnyEvent]] = field(default_factory=list)
    expected: Expected = field(default_factory=Expected)


def traffic(tenant: str, requests: int, *, start: float, spacing_s: float = 1.0,
            keys: tuple[str, ...] = ("key-a", "key-b"),
            models: tuple[str, ...] = ("model-x", "model-y"),
            reject_every: int = 10, hit_every: int = 5, price_version: int | None = 1
            ) -> Traffic:
    """`requests` requests of `tenant`, one every `spacing_s` from `start` (Unix s)."""
    out = Traffic(tenant)
    exp = out.expected
    for i, key, model in zip(range(requests), itertools.cycle(keys), itertools.cycle(models),
                             strict=False):
        ts = start + i * spacing_s
        request_id = f"{tenant}-req-{i}"
        if reject_every and i % reject_every == reject_every - 1:
            out.events.append((topics.REQUESTS, RequestRejected(
                ts=ts, request_id=request_id, endpoint="/v1/chat/completions", model=model,
                key_id=key, tenant=tenant, status_code=429, error_type="rate_limit_exceeded",
                message="Rate limit reached.", latency_ms=1.0)))
            exp.requests += 1
            exp.errors += 1
            exp.by_model[model] = exp.by_model.get(model, 0) + 1
            continue
        prompt, completion = 10 + i % 7, 3 + i % 5
        hit = bool(hit_every) and i % hit_every == 0
        # A hit's usage is the gateway's: no engine tokens, the answer's at the hit price.
        fresh = (0, 0) if hit else (prompt, completion)
        hit_tokens = prompt + completion if hit else 0
        usage = UsageRecorded(ts=ts, request_id=request_id, model=model, key_id=key,
                              tenant=tenant, worker_id="cache:gw" if hit else "w1",
                              status="completed", prompt_tokens=fresh[0],
                              completion_tokens=fresh[1], cache_hit_tokens=hit_tokens,
                              ttft_ms=20.0 + i % 10, latency_ms=100.0 + i % 50)
        cost = fresh[0] * PROMPT_MICROS + fresh[1] * COMPLETION_MICROS + hit_tokens * HIT_MICROS
        out.events += [
            (topics.USAGE, usage),
            (topics.REQUESTS, RequestCompleted(
                ts=ts + 0.01, request_id=request_id, endpoint="/v1/chat/completions",
                model=model, key_id=key, tenant=tenant, prompt_tokens=prompt,
                completion_tokens=completion, ttft_ms=25.0 + i % 10,
                latency_ms=110.0 + i % 50, cache="hit" if hit else "miss")),
            (topics.LEDGER, LedgerEntry(
                event_id=f"ledger:{usage.event_id}", ts=ts + 0.02,
                usage_event_id=usage.event_id, request_id=request_id, key_id=key,
                tenant=tenant, model=model, status="completed", prompt_tokens=fresh[0],
                completion_tokens=fresh[1], cached_tokens=0, price_version=price_version,
                input_micros=fresh[0] * PROMPT_MICROS,
                output_micros=fresh[1] * COMPLETION_MICROS, cached_micros=0,
                cache_hit_tokens=hit_tokens, cache_hit_micros=hit_tokens * HIT_MICROS,
                cost_micros=cost, occurred_at=ts, day="", month="")),
        ]
        if hit:
            out.events.append((topics.CACHE, CacheHit(
                ts=ts + 0.03, request_id=request_id, cache_key=f"c{i}", key_id=key,
                tenant=tenant, model=model, prompt_tokens=prompt,
                completion_tokens=completion)))
            exp.cache_hits += 1
            exp.saved_tokens += hit_tokens
            exp.hit_cost_micros += hit_tokens * HIT_MICROS
            exp.savings_micros += (prompt * PROMPT_MICROS + completion * COMPLETION_MICROS
                                   - hit_tokens * HIT_MICROS)
        exp.requests += 1
        exp.cache_lookups += 1
        exp.usage += 1
        exp.ledger += 1
        exp.prompt_tokens += fresh[0]
        exp.completion_tokens += fresh[1]
        exp.cost_micros += cost
        exp.by_model[model] = exp.by_model.get(model, 0) + 1
        exp.by_key[key] = exp.by_key.get(key, 0) + cost
    return out


def with_duplicates(events: list[tuple[str, AnyEvent]], every: int
                    ) -> list[tuple[str, AnyEvent]]:
    """The same events with every `every`-th one published twice (at-least-once producers)."""
    out = []
    for i, pair in enumerate(events):
        out.append(pair)
        if i % every == 0:
            out.append(pair)
    return out


async def produce(bootstrap: str, events: list[tuple[str, AnyEvent]]) -> None:
    """Publish events keyed by key id, like the stack does, and wait until all are acked."""
    await broker_at(bootstrap).ensure()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    try:
        pending = []
        for topic, event in events:
            key = (getattr(event, "key_id", None) or "").encode()
            pending.append(await producer.send(topic, event.encode(), key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def store_queries(tenant: str) -> dict[str, str]:
    """SQL for what ClickHouse holds for `tenant` (a name the tests made, safe to inline):
    per stream its rows and distinct event ids, per rollup the sums it keeps."""
    queries = {table: f"SELECT count(), uniqExact(event_id) FROM {table} "
                      f"WHERE tenant = '{tenant}'"
               for table in ("requests", "usage", "ledger", "cache")}
    for rollup in ("rollup_minute", "rollup_hour", "rollup_tenant_hour"):
        queries[rollup] = (
            "SELECT sum(requests), sum(errors), sum(usage_records), sum(ledger_entries), "
            "sum(cost_micros), sum(prompt_tokens), sum(cache_hits), sum(saved_prompt_tokens), "
            "sum(hit_cost_micros) "
            f"FROM {rollup} WHERE tenant = '{tenant}'")
    return queries


def expected(t: Traffic) -> dict[str, tuple[int, ...]]:
    """What `store_queries` must return once every event of `t` has landed, once."""
    e = t.expected
    hit_prompt = sum(getattr(ev, "prompt_tokens", 0) for topic, ev in t.events
                     if topic == topics.CACHE)
    sums = (e.requests, e.errors, e.usage, e.ledger, e.cost_micros, e.prompt_tokens,
            e.cache_hits, hit_prompt, e.hit_cost_micros)
    return {"requests": (e.requests, e.requests), "usage": (e.usage, e.usage),
            "ledger": (e.ledger, e.ledger), "cache": (e.cache_hits, e.cache_hits),
            "rollup_minute": sums, "rollup_hour": sums, "rollup_tenant_hour": sums}
