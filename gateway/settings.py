"""Gateway configuration, read once at start from `SLUICE_*` environment variables."""

from __future__ import annotations

import socket
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    gateway_id: str | None = Field(default=None, description="Names this gateway's reply topic.")

    kafka_bootstrap: str = "127.0.0.1:9092"
    # Tansu does not answer a waiting fetch when data arrives (it looks at the start of
    # the wait and at halvings of what is left), so replies are polled at about this
    # interval; with Apache Kafka a larger wait costs no latency.
    kafka_fetch_wait_ms: int = 3
    reply_busy_fetch_wait_ms: int = Field(
        default=1, description="The reply reader's fetch wait while a lease grant is "
        "awaited (and for a second after); `kafka_fetch_wait_ms` otherwise.")
    inference_partitions: int = 8
    reply_rotate_records: int = Field(
        default=250, description="Move to a fresh reply topic after this many replies, "
        "because the embedded broker's fetches slow as a partition grows (about 1 ms per "
        "1,000 batches, and reading must fit in the 1 ms busy wait) (0: never, the "
        "setting for Apache Kafka).")

    models: Annotated[list[str], NoDecode] = Field(
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
    admin_key: str | None = Field(default=None, description="The admin API's bearer key.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For is believed.")
    unauthenticated_per_minute: int = 60
    unauthenticated_burst: int = 30
    streams_url: str = "http://127.0.0.1:6066"
    analytics_url: str = Field(default="http://127.0.0.1:8090",
                               description="The analytics process's reporting API.")
    internal_token: str = Field(default="", description="Shown to the analytics API in "
                                "`x-sluice-internal-token` (the same setting as its own).")
    lease_timeout_s: float = 2.0
    # How long a gateway may keep an unused slice of a key's budget (capped at the
    # minute's end); what it did not use goes back with its next lease request.
    lease_ttl_s: float = 10.0
    lease_max_requests: int = 64
    default_reserved_tokens: int = Field(
        default=512, description="Tokens held for a request that sets no max_tokens.")
    cpus: list[int] | None = Field(
        default=None, description="Pin the process to these CPUs (set by `sluice up`)."
    )

    @field_validator("models", "trusted_proxies", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """Accept a comma-separated list from the environment."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def resolved_gateway_id(self) -> str:
        return self.gateway_id or f"{socket.gethostname()}-{self.port}"
