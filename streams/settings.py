"""Streams configuration, read once at start from `SLUICE_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".cache" / "sluice")
    kafka_bootstrap: str = "127.0.0.1:9092"
    streams_id: str = "sluice-streams"
    # Faust waits 1.5 s per fetch by default; Tansu does not answer a waiting fetch when
    # data arrives, only at the start of the wait and at halvings of what is left. The
    # short wait holds while lease requests come in (and for `streams_busy_s` after the
    # last); otherwise the app polls with the long one (see `streams.transport`). 2 ms
    # put lease fetch p99 0.4-1 ms lower, but the polling added ~4 ms to streamed answers'
    # TTFT at concurrency 1 (docs/benchmarks.md), so 3.
    streams_fetch_wait_ms: int = 3
    streams_idle_fetch_wait_ms: int = 20
    # While urgent lease requests come in (a caller waits on each: a key without a lease
    # in hand), the app polls with this wait and fetches only lease requests, the other
    # topics once every `streams_others_every_ms` (0: every fetch). A fetch of 8
    # partitions instead of 67 (Tansu looks at each at each look) took the request's hop
    # to the limiter from p50 2.0 to 0.75 ms, and lease fetch p99 from 9.6-11.8 to
    # 7.3-7.7 ms (docs/benchmarks.md). Fetches ahead of need do not switch it on, so
    # serving traffic keeps the 3 ms wait.
    streams_urgent_fetch_wait_ms: int = 1
    streams_others_every_ms: int = 50
    streams_busy_s: float = 1.0
    streams_host: str = "127.0.0.1"
    streams_port: int = 6066
    session_timeout_s: float = 10.0
    commit_interval_s: float = 0.25
    # Usage is billed in batches of at most this many events, taken within this long. A
    # key's account is written once per batch, so a longer wait writes a busy key less
    # often: 0.1 s billed 40% more events/s than 0.02 s (docs/benchmarks.md), and an event
    # still counts within a few hundred ms.
    streams_batch_max: int = 1000
    streams_batch_wait_s: float = 0.1
    # How long a gateway may keep an unused slice of a key's budget (capped at the
    # minute's end); what it did not use goes back with its next lease request.
    lease_ttl_s: float = 10.0
    slot_ttl_s: float = 30.0
    cpus: list[int] | None = Field(
        default=None, description="Pin the process to these CPUs (set by `sluice up`)."
    )
