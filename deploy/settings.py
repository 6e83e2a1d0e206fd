"""Settings of `sluice up` and the broker, from `SLUICE_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from broker.settings import CommaList, SluiceSettings


class Settings(SluiceSettings):
    kafka_bootstrap: str | None = Field(  # type: ignore[assignment]
        default=None, description="An existing Kafka cluster; unset starts the embedded broker."
    )
    broker_host: str = "127.0.0.1"
    broker_port: int = 9092
    host: str = "127.0.0.1"
    port: int = 8080
    models: CommaList = Field(
        default_factory=lambda: ["smollm2-135m-instruct", "all-minilm-l6-v2"],
        description="One worker each: a chat model and an embedding model by default.")
    ready_timeout_s: float = 600.0
    streams_host: str = "127.0.0.1"
    streams_port: int = 6066
    analytics_host: str = "127.0.0.1"
    analytics_port: int = 8090
    internal_token: str | None = Field(
        default=None, description="What the gateway shows the analytics API; unset makes a "
        "new one for each `sluice up`.")
    clickhouse_url: str | None = Field(
        default=None, description="As `sluice analytics` reads it; unset is embedded chDB.")
    journal_path: Path | None = Field(
        default=None, description="With the embedded broker: the definitions journal "
        "(`broker.journal`); default `SLUICE_HOME/journal/definitions.jsonl`.")
    pin: bool = Field(default=True, description="On CPU-only machines, keep the broker and "
                      "gateway off the cores vLLM binds its model runner to.")

    @property
    def journal(self) -> Path:
        return self.journal_path or self.home / "journal" / "definitions.jsonl"

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"{self.broker_host}:{self.broker_port}"
