"""How each event becomes a row of its stream's table (see migrations/0001_streams.sql).

One table per topic. An event that does not belong on its topic gives no row: it is a
producer's mistake, and the sink counts and skips it rather than stopping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from schemas import topics
from schemas.events import (
    AnyEvent,
    CacheEvicted,
    CacheHit,
    CacheStored,
    LedgerEntry,
    RequestCompleted,
    RequestRejected,
    UsageRecorded,
)

Row = tuple[Any, ...]


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _day(ts: float) -> date:
    return _time(ts).date()


@dataclass(frozen=True)
class Table:
    """A stream's table: its name, its topic, its columns and how an event fills them."""

    name: str
    topic: str
    columns: tuple[str, ...]
    row: Callable[[AnyEvent], Row | None]
    time_column: str = "ts"


def _request(e: AnyEvent) -> Row | None:
    if isinstance(e, RequestCompleted):
        return (e.event_id, e.event_type, _time(e.ts), e.request_id, e.tenant or "",
                e.key_id or "", e.user or "", e.endpoint, e.model, e.variant or "",
                e.experiment_id or "", "completed", e.status_code, "", "", "", e.stream,
                e.finish_reason or "", e.cache, e.disconnected, e.prompt_tokens,
                e.completion_tokens, e.ttft_ms, e.latency_ms)
    if isinstance(e, RequestRejected):
        return (e.event_id, e.event_type, _time(e.ts), e.request_id, e.tenant or "",
                e.key_id or "", "", e.endpoint, e.model or "", e.variant or "",
                e.experiment_id or "", "rejected", e.status_code, e.error_type,
                e.error_code or "", e.message, False, "", "", False, 0, 0, None, e.latency_ms)
    return None


def _usage(e: AnyEvent) -> Row | None:
    if not isinstance(e, UsageRecorded):
        return None
    return (e.event_id, _time(e.ts), e.request_id, e.tenant or "", e.key_id or "", e.user or "",
            e.model, e.variant or "", e.experiment_id or "", e.worker_id, e.status,
            e.finish_reason or "", e.prompt_tokens, e.completion_tokens, e.cached_tokens,
            e.queue_ms, e.ttft_ms, e.latency_ms, e.reserved_tokens)


def _cache(e: AnyEvent) -> Row | None:
    if isinstance(e, CacheHit):
        return (e.event_id, e.event_type, _time(e.ts), e.request_id, e.cache_key, e.tenant or "",
                e.key_id or "", e.model, e.prompt_tokens, e.completion_tokens, 0, "")
    if isinstance(e, CacheStored):
        return (e.event_id, e.event_type, _time(e.ts), e.request_id, e.cache_key, e.tenant or "",
                e.key_id or "", e.model, 0, 0, e.size_bytes, "")
    if isinstance(e, CacheEvicted):
        return (e.event_id, e.event_type, _time(e.ts), "", e.cache_key, e.tenant or "",
                e.key_id or "", e.model, 0, 0, 0, e.reason)
    return None


def _ledger(e: AnyEvent) -> Row | None:
    if not isinstance(e, LedgerEntry):
        return None
    return (e.event_id, _time(e.ts), _time(e.occurred_at), e.usage_event_id, e.request_id,
            e.tenant or "", e.key_id or "", e.model, e.variant or "", e.experiment_id or "",
            e.status, e.prompt_tokens, e.completion_tokens, e.cached_tokens, e.price_version,
            e.input_micros, e.output_micros, e.cached_micros, e.cost_micros,
            _day(e.occurred_at), e.cache_hit_tokens, e.cache_hit_micros)


TABLES: tuple[Table, ...] = (
    Table("requests", topics.REQUESTS, (
        "event_id", "event_type", "ts", "request_id", "tenant", "key_id", "user", "endpoint",
        "model", "variant", "experiment_id", "status", "status_code", "error_type",
        "error_code", "message", "stream", "finish_reason", "cache", "disconnected",
        "prompt_tokens", "completion_tokens", "ttft_ms", "latency_ms"), _request),
    Table("usage", topics.USAGE, (
        "event_id", "ts", "request_id", "tenant", "key_id", "user", "model", "variant",
        "experiment_id", "worker_id", "status", "finish_reason", "prompt_tokens",
        "completion_tokens", "cached_tokens", "queue_ms", "ttft_ms", "latency_ms",
        "reserved_tokens"), _usage),
    Table("cache", topics.CACHE, (
        "event_id", "event_type", "ts", "request_id", "cache_key", "tenant", "key_id", "model",
        "prompt_tokens", "completion_tokens", "size_bytes", "reason"), _cache),
    Table("ledger", topics.LEDGER, (
        "event_id", "ts", "occurred_at", "usage_event_id", "request_id", "tenant", "key_id",
        "model", "variant", "experiment_id", "status", "prompt_tokens", "completion_tokens",
        "cached_tokens", "price_version", "input_micros", "output_micros", "cached_micros",
        "cost_micros", "day", "cache_hit_tokens", "cache_hit_micros"), _ledger,
        time_column="occurred_at"),
)

BY_TOPIC: dict[str, Table] = {t.topic: t for t in TABLES}
