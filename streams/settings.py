"""Streams configuration, read once at start from `SLUICE_*` environment variables."""

from __future__ import annotations

from pydantic import Field

from broker.settings import SluiceSettings


class Settings(SluiceSettings):
    streams_id: str = "sluice-streams"
    streams_host: str = "127.0.0.1"
    streams_port: int = 6066
    session_timeout_s: float = 10.0
    commit_interval_s: float = 0.25
    # Usage is billed in batches of at most this many events, taken within this long; a
    # key's account is written once per batch, so a longer wait writes a busy key less
    # often, and an event still counts within a few hundred ms.
    streams_batch_max: int = 1000
    streams_batch_wait_s: float = 0.1
    # How long a gateway may keep an unused slice of a key's budget (capped at the
    # minute's end); what it did not use goes back with its next lease request.
    lease_ttl_s: float = 10.0
    slot_ttl_s: float = 30.0
    restore_from: str | None = Field(
        default=None, description="Set by `sluice up` with the embedded broker: the "
        "analytics process, whose ledger the totals are rebuilt from when a new broker "
        "starts with none.")
    internal_token: str = Field(default="", description="Shown to the analytics process.")
