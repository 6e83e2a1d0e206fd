"""Gateway configuration, read once at start from `SLUICE_*` environment variables."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field

from broker.settings import CommaList, SluiceSettings


class Settings(SluiceSettings):
    host: str = "127.0.0.1"
    port: int = 8080
    gateway_id: str | None = Field(default=None, description="Names this gateway's reply topic.")

    inference_partitions: int = 8

    models: CommaList = Field(
        default_factory=lambda: ["smollm2-135m-instruct"],
        description="Models that must have a live worker for /ready.",
    )
    admission_timeout: float = 2.0
    request_timeout: float = 600.0
    max_body_bytes: int = 2 * 1024 * 1024
    max_n: int = 16
    queue_factor: float = Field(
        default=2.0, description="Requests in flight per model, as a multiple of live capacity."
    )
    max_in_flight_per_model: int | None = None
    failover_after_s: float = 2.0
    trusted_proxies: CommaList = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For is believed.")
    unauthenticated_per_minute: int = 60
    unauthenticated_burst: int = 30
    streams_url: str = "http://127.0.0.1:6066"
    analytics_url: str = Field(default="http://127.0.0.1:8090",
                               description="The analytics process's reporting API.")
    internal_token: str = Field(default="", description="Shown to the analytics API in "
                                "`x-sluice-internal-token` (the same setting as its own).")
    journal_path: Path | None = Field(default=None, description="Set by `sluice up` with the "
                                      "embedded broker: the definitions journal "
                                      "(`broker.journal`) the admin API appends to.")
    lease_timeout_s: float = 2.0
    # How long a gateway may keep an unused slice of a key's budget (capped at the
    # minute's end); what it did not use goes back with its next lease request.
    lease_ttl_s: float = 10.0
    lease_max_requests: int = 64
    default_reserved_tokens: int = Field(
        default=512, description="Tokens held for a request that sets no max_tokens.")
    cache_max_mb: int = Field(default=256, ge=1, description="Memory for the response "
                              "cache's answers; the least recently used go first.")
    cache_embedding_model: str = Field(default="all-minilm-l6-v2", description="Embeds "
                                       "the prompts of keys with a semantic cache.")
    cache_embedding_timeout_s: float = Field(default=2.0, description="A lookup without an "
                                             "embedding by then is an exact one.")
    @property
    def resolved_gateway_id(self) -> str:
        return self.gateway_id or f"{socket.gethostname()}-{self.port}"
