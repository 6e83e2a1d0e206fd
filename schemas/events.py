"""Every event that crosses a topic. Values on the wire are the JSON of these models.

Events are immutable and strict: an unknown field is a producer bug, not something to
carry along. Each has an `event_id` that consumers use to make at-least-once delivery
idempotent, an `event_type` that names it on the wire and a `schema_version`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def new_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=new_id)
    schema_version: int = 1
    ts: float = Field(default_factory=time.time, description="Unix time, seconds (UTC).")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- inference ----------------------------------------------------------------------------


class Message(_Part):
    role: str
    content: str
    name: str | None = None


class Sampling(_Part):
    """Sampling parameters, already validated by the gateway. None means the engine default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


class InferenceRequested(Event):
    """A request for a worker of `model`, answered on `reply_topic`."""

    event_type: Literal["inference_requested"] = "inference_requested"
    request_id: str
    model: str
    kind: Literal["chat", "completion"]
    messages: tuple[Message, ...] = ()
    prompt: str | tuple[int, ...] | None = None
    sampling: Sampling = Sampling()
    stream: bool = False
    reply_topic: str
    priority: int = 0
    deadline: float = Field(description="Unix time after which nobody waits for the answer.")
    tenant: str | None = None
    key_id: str | None = None
    user: str | None = None
    variant: str | None = None


class InferenceCancelled(Event):
    event_type: Literal["inference_cancelled"] = "inference_cancelled"
    request_id: str
    reason: str = "client_disconnected"


class ChoiceDelta(_Part):
    """New text for one choice. `offset` counts the characters sent before it."""

    index: int = 0
    offset: int = 0
    text: str = ""
    finish_reason: str | None = None


class TokenUsage(_Part):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class InferenceError(_Part):
    status: int
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    message: str


class TokenChunk(Event):
    """Coalesced output of one request; the `final` one carries usage or an error.

    `attempt` tells executions of the same request apart: after a worker dies its
    request is redelivered and runs again under a new attempt.
    """

    event_type: Literal["token_chunk"] = "token_chunk"
    request_id: str
    worker_id: str
    attempt: str
    seq: int
    choices: tuple[ChoiceDelta, ...] = ()
    final: bool = False
    usage: TokenUsage | None = None
    error: InferenceError | None = None


UsageStatus = Literal["completed", "cancelled", "failed", "expired"]


class UsageRecorded(Event):
    """The engine's exact token counts for one request, whatever its outcome."""

    event_type: Literal["usage_recorded"] = "usage_recorded"
    request_id: str
    model: str
    key_id: str | None = None
    tenant: str | None = None
    user: str | None = None
    variant: str | None = None
    worker_id: str
    status: UsageStatus
    finish_reason: str | None = None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    queue_ms: float = 0.0
    ttft_ms: float | None = None
    latency_ms: float = 0.0


# -- gateway outcomes ---------------------------------------------------------------------


class RequestCompleted(Event):
    event_type: Literal["request_completed"] = "request_completed"
    request_id: str
    endpoint: str
    model: str
    key_id: str | None = None
    tenant: str | None = None
    user: str | None = None
    variant: str | None = None
    status_code: int = 200
    stream: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    latency_ms: float
    disconnected: bool = False
    cache: Literal["hit", "miss", "bypass"] = "bypass"


class RequestRejected(Event):
    event_type: Literal["request_rejected"] = "request_rejected"
    request_id: str
    endpoint: str
    model: str | None = None
    key_id: str | None = None
    tenant: str | None = None
    status_code: int
    error_type: str
    error_code: str | None = None
    message: str
    latency_ms: float


# -- workers ------------------------------------------------------------------------------


class WorkerHeartbeat(Event):
    """A worker's liveness and load. A `stopping` beat withdraws it at once."""

    event_type: Literal["worker_heartbeat"] = "worker_heartbeat"
    worker_id: str
    models: tuple[str, ...]
    max_model_len: int
    capacity: int
    in_flight: int
    queue_depth: int = 0
    status: Literal["ready", "stopping"] = "ready"
    interval_s: float = 1.0


AnyEvent = Annotated[
    InferenceRequested
    | InferenceCancelled
    | TokenChunk
    | UsageRecorded
    | RequestCompleted
    | RequestRejected
    | WorkerHeartbeat,
    Field(discriminator="event_type"),
]

_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def decode(raw: bytes | str) -> AnyEvent:
    """Parse any event from its wire form; raises pydantic.ValidationError if it is not one."""
    return _ADAPTER.validate_json(raw)
