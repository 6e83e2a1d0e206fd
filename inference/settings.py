"""Worker configuration, read once at start from `SLUICE_*` environment variables."""

from __future__ import annotations

import os
import re
import socket
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from broker.settings import SluiceSettings


class Settings(SluiceSettings):
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    commit_interval_ms: int = 100

    model: str = "smollm2-135m-instruct"
    model_path: str | None = Field(
        default=None, description="A Hugging Face folder or hub id; the catalog's build if unset."
    )
    served_names: Annotated[list[str], NoDecode] = Field(default_factory=list)
    worker_id: str | None = None
    inference_partitions: int = 8

    max_model_len: int | None = Field(
        default=None, description="None: the catalog's context for the model, else its own.")
    max_num_seqs: int = 64
    dtype: str = "auto"
    enforce_eager: bool | None = Field(
        default=None, description="None: eager on the CPU, where compiled mode gave wrong tokens."
    )
    kv_cache_gib: float = 2.0
    gpu_memory_utilization: float = 0.9
    # vLLM's own statistics (its periodic throughput log line); Sluice's metrics come from
    # its events, and the engine would keep these on every step.
    engine_log_stats: bool = False

    pin_frontend: bool = True
    worker_heartbeat_s: float = 1.0
    chunk_interval_ms: float = 15.0
    drain_timeout_s: float = 20.0

    @field_validator("served_names", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """Accept a list from the environment, separated by spaces or `;` (a name's
        defaults use commas: `precise@temperature=0;creative@temperature=1.2,top_p=0.9`)."""
        if isinstance(value, str):
            return [v for v in re.split(r"[;\s]+", value) if v]
        return value

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this worker answers to; the first is the engine's own."""
        extra = (n.split("@", 1)[0] for n in self.served_names)
        return (self.model, *(n for n in extra if n != self.model))

    @property
    def name_defaults(self) -> dict[str, dict[str, float]]:
        """Default sampling per served name: `creative@temperature=1.2,top_p=0.9` serves
        the same engine as `creative`, sampling hotter unless a request says otherwise."""
        out: dict[str, dict[str, float]] = {}
        for entry in self.served_names:
            name, _, spec = entry.partition("@")
            pairs = (p.split("=", 1) for p in spec.split(",") if "=" in p)
            out[name] = {k.strip(): float(v) for k, v in pairs}
        return out

    @property
    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{self.model}-{os.getpid()}"
