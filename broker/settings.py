"""Settings every Sluice process shares, read once at start from `SLUICE_*` variables.

Each service's `Settings` extends `SluiceSettings` with its own fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broker.profiles import BrokerKind, Profile, profile


def default_home() -> Path:
    return Path.home() / ".cache" / "sluice"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


# A list that the environment gives comma-separated: `SLUICE_MODELS=a,b`.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]


class SluiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    kafka_bootstrap: str = "127.0.0.1:9092"
    broker: BrokerKind = Field(
        default="tansu", description="The kind of broker at `kafka_bootstrap`: `tansu` (the "
        "embedded one) or `kafka` (Apache Kafka, Redpanda); picks how clients read it.")
    broker_tuning: dict[str, Any] = Field(
        default_factory=dict, description="JSON: fields of the broker's profile to "
        'replace, e.g. `{"reply_rotate_records": 200}` (`broker.profiles`).')
    cpus: list[int] | None = Field(
        default=None, description="Pin the process to these CPUs (set by `sluice up`).")
    admin_key: str | None = Field(default=None, description="The admin API's bearer key.")

    @property
    def admin_key_path(self) -> Path:
        """Where `sluice up` keeps the admin key it made, when none was given."""
        return self.home / "admin_key"

    def known_admin_key(self) -> str | None:
        """The admin key a command-line client uses: given, or the one `sluice up` made."""
        if self.admin_key:
            return self.admin_key
        path = self.admin_key_path
        return (path.read_text().strip() or None) if path.exists() else None

    @property
    def profile(self) -> Profile:
        return profile(self.broker, self.broker_tuning)
