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

from schemas.tiers import Budgets, CachePolicy, Limits, Tier


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


# Whether the response cache answered a request, could have but had nothing, or was not asked.
CacheState = Literal["hit", "miss", "bypass"]


class InferenceRequested(Event):
    """A request for a worker of `model`, answered on `reply_topic`.

    A chat has `messages`, a completion its `prompt`, and an embedding its `inputs` (texts
    or token ids), answered with one vector per input in order.
    """

    event_type: Literal["inference_requested"] = "inference_requested"
    request_id: str
    model: str
    kind: Literal["chat", "completion", "embedding"]
    messages: tuple[Message, ...] = ()
    prompt: str | tuple[int, ...] | None = None
    inputs: tuple[str | tuple[int, ...], ...] = ()
    dimensions: int | None = None
    sampling: Sampling = Sampling()
    stream: bool = False
    reply_topic: str
    priority: int = 0
    deadline: float = Field(description="Unix time after which nobody waits for the answer.")
    tenant: str | None = None
    key_id: str | None = None
    user: str | None = None
    variant: str | None = None
    experiment_id: str | None = None
    reserved_tokens: int = Field(default=0, description="Tokens the limiter holds for it.")
    reserved_at: float = Field(default=0.0, description="When they were reserved (Unix s).")


class InferenceCancelled(Event):
    event_type: Literal["inference_cancelled"] = "inference_cancelled"
    request_id: str
    reason: str = "client_disconnected"


class ChoiceDelta(_Part):
    """New text for one choice. `offset` counts the characters sent before it.

    An embedding's choices are its inputs: each carries the whole vector in `embedding`,
    base64 of little-endian float32 (a quarter of the bytes of JSON numbers).
    """

    index: int = 0
    offset: int = 0
    text: str = ""
    finish_reason: str | None = None
    embedding: str | None = None


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
    experiment_id: str | None = None
    worker_id: str
    status: UsageStatus
    finish_reason: str | None = None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_hit_tokens: int = Field(default=0, description="Tokens of an answer served from the "
                                  "response cache (the engine's counts are then 0).")
    queue_ms: float = 0.0
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    reserved_tokens: int = 0
    reserved_at: float = 0.0


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
    experiment_id: str | None = None
    status_code: int = 200
    stream: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    latency_ms: float
    admitted_at: float | None = Field(
        default=None, description="Unix time the request took its concurrency slot; it "
        "held the slot until `ts`.")
    disconnected: bool = False
    cache: CacheState = "bypass"


class RequestRejected(Event):
    event_type: Literal["request_rejected"] = "request_rejected"
    request_id: str
    endpoint: str
    model: str | None = None
    key_id: str | None = None
    tenant: str | None = None
    variant: str | None = None
    experiment_id: str | None = None
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
    task: Literal["generate", "embed"] = "generate"
    max_model_len: int
    capacity: int
    in_flight: int
    queue_depth: int = 0
    status: Literal["ready", "stopping"] = "ready"
    interval_s: float = 1.0


# -- definitions (compacted topics) ---------------------------------------------------------


class KeyState(Event):
    """A key as it is now; the newest state per `key_id` is the key."""

    event_type: Literal["key_state"] = "key_state"
    key_id: str
    tenant: str
    name: str | None = None
    tier: Tier = "free"
    secret_hash: str = Field(description="SHA-256 of the secret, hex; the secret is never kept.")
    limits: Limits = Limits()
    budgets: Budgets = Budgets()
    cache: CachePolicy | None = Field(default=None, description="The tenant's if unset.")
    revoked: bool = False
    created_at: float
    version: int = 1


class TenantState(Event):
    """A tenant as it is now. Disabling one stops all of its keys. New keys take its
    `default_tier` and `budgets` unless they set their own."""

    event_type: Literal["tenant_state"] = "tenant_state"
    tenant: str
    name: str | None = None
    default_tier: Tier = "free"
    budgets: Budgets = Budgets()
    cache: CachePolicy = CachePolicy()
    disabled: bool = False
    created_at: float
    version: int = 1


class PriceVersion(_Part):
    """A model's price from `effective_from` on, in integer micro-dollars per million tokens."""

    version: int
    effective_from: float
    input_micros_per_million: int = Field(ge=0)
    output_micros_per_million: int = Field(ge=0)
    cached_micros_per_million: int = Field(ge=0)
    cache_hit_micros_per_million: int = Field(default=0, ge=0, description="For the tokens "
                                              "of an answer served from the response cache.")


class PriceSchedule(Event):
    """Every price a model has had, oldest first, so compaction never loses history."""

    event_type: Literal["price_schedule"] = "price_schedule"
    model: str
    versions: tuple[PriceVersion, ...]

    def at(self, ts: float) -> PriceVersion | None:
        """The price in force at `ts`."""
        current = None
        for v in self.versions:
            if v.effective_from <= ts:
                current = v
        return current


class Experiment(Event):
    """An A/B test: traffic for `model_a` is split, `split` percent going to `model_b`."""

    event_type: Literal["experiment"] = "experiment"
    experiment_id: str
    name: str
    model_a: str
    model_b: str
    split: float = Field(ge=0, le=100)
    status: Literal["running", "stopped"] = "running"
    created_at: float
    stopped_at: float | None = None
    version: int = 1


# -- admission ------------------------------------------------------------------------------


class LeaseRequested(Event):
    """A gateway asks the limiter for a slice of one key's budget.

    It carries the key's effective limits and budgets as the gateway sees them in
    `sluice.keys`, so the limiter never waits for a key it has not read yet, and what is
    left of the gateway's previous lease, which goes back into the budget.
    """

    event_type: Literal["lease_requested"] = "lease_requested"
    key_id: str
    tenant: str
    gateway_id: str
    reply_topic: str
    requests: int = Field(ge=0)
    tokens: int = Field(ge=0)
    tokens_min: int = Field(default=0, ge=0,
                            description="Tokens the request waiting on this lease needs.")
    slots: int = Field(ge=0, description="Concurrency slots wanted on top of those held.")
    held_slots: int = Field(ge=0, description="Slots this gateway holds for the key now.")
    returned_requests: int = Field(default=0, ge=0)
    returned_tokens: int = Field(default=0, ge=0)
    returned_at: float = Field(default=0.0, description="When the returned part was granted.")
    urgent: bool = Field(default=False, description=(
        "A request waits on this grant (not a fetch ahead of need); where the broker's "
        "profile paces the limiter, it polls fastest while such come in."))
    limits: Limits
    budgets: Budgets = Budgets()


class RateSnapshot(_Part):
    """What the `x-ratelimit-*` headers report."""

    requests_limit: int
    requests_remaining: int
    requests_reset_s: float
    tokens_limit: int
    tokens_remaining: int
    tokens_reset_s: float


class LeaseGranted(Event):
    """The limiter's answer, on the asking gateway's reply topic; zero grants when denied."""

    event_type: Literal["lease_granted"] = "lease_granted"
    lease_request_id: str
    key_id: str
    requests: int = 0
    tokens: int = 0
    slots: int = 0
    granted_at: float
    expires_at: float
    denied: Literal["rate_limit_exceeded", "insufficient_quota"] | None = None
    message: str | None = None
    retry_after_s: float = 0.0
    snapshot: RateSnapshot
    slots_free: int | None = Field(default=None, description=(
        "Concurrency slots of the key no gateway held after this answer: unless that is "
        "more than half, a gateway hands a slot back as soon as its request ends, so "
        "another gateway can have it."))


class BudgetAlert(Event):
    """A key crossed a soft quota or budget (once per period), or hit a hard one."""

    event_type: Literal["budget_alert"] = "budget_alert"
    key_id: str
    tenant: str
    budget: str
    level: Literal["soft", "hard"]
    threshold: int
    used: int
    period: str


# -- billing and cache ----------------------------------------------------------------------


class LedgerEntry(Event):
    """One priced usage event, for billing systems (documented in docs/ledger.md).

    `event_id` is `ledger:<usage event id>`: a usage event delivered twice yields the same
    entry twice, which a consumer drops by id. Amounts are integer micro-dollars.
    """

    event_type: Literal["ledger_entry"] = "ledger_entry"
    usage_event_id: str = Field(description="The UsageRecorded event this entry prices.")
    request_id: str
    key_id: str | None
    tenant: str | None
    model: str = Field(description="The model name the request was served under.")
    variant: str | None = None
    experiment_id: str | None = None
    status: UsageStatus
    prompt_tokens: int = Field(description="All prompt tokens, cached ones included.")
    completion_tokens: int
    cached_tokens: int = Field(description="Prompt tokens served from the prefix cache, "
                               "billed at the cached rate.")
    price_version: int | None = Field(description="The model's price version used; None "
                                      "when the model had no price yet (amounts are 0).")
    input_micros: int = Field(description="Micro-dollars for the uncached prompt tokens.")
    output_micros: int = Field(description="Micro-dollars for the completion tokens.")
    cached_micros: int = Field(description="Micro-dollars for the cached prompt tokens.")
    cache_hit_tokens: int = Field(default=0, description="Tokens of an answer served from the "
                                  "response cache, billed at the cache price.")
    cache_hit_micros: int = Field(default=0, description="Micro-dollars for them.")
    cost_micros: int = Field(description="input_micros + output_micros + cached_micros + "
                             "cache_hit_micros; 1,000,000 micro-dollars are 1 USD.")
    occurred_at: float = Field(description="When the usage happened (Unix s, UTC).")
    day: str = Field(description="UTC day of `occurred_at`, YYYY-MM-DD.")
    month: str = Field(description="UTC month of `occurred_at`, YYYY-MM.")


class CachedChoice(_Part):
    text: str
    finish_reason: str | None = None


class CacheHit(Event):
    """A request answered from the response cache instead of by a worker."""

    event_type: Literal["cache_hit"] = "cache_hit"
    request_id: str
    cache_key: str
    key_id: str | None = None
    tenant: str | None = None
    model: str
    prompt_tokens: int = Field(description="What the stored answer's request used, saved.")
    completion_tokens: int
    stored_request_id: str | None = Field(default=None,
                                          description="The request whose answer was reused.")
    similarity: float | None = Field(default=None, description="Cosine similarity of the "
                                     "two last messages for a semantic hit; None if exact.")
    gateway_id: str | None = None


class CacheStored(Event):
    """An answer stored for reuse: the whole entry, so any replica rebuilds the cache from
    the topic. Entries are scoped to their tenant by `cache_key`."""

    event_type: Literal["cache_stored"] = "cache_stored"
    request_id: str
    cache_key: str
    key_id: str | None = None
    tenant: str | None = None
    model: str
    size_bytes: int
    expires_at: float = 0.0
    choices: tuple[CachedChoice, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    embedding: str | None = Field(default=None, description="The last message's embedding "
                                  "(base64 of float32, unit length) for semantic lookups.")
    scope: str | None = Field(default=None, description="What a semantic neighbour must "
                              "share: tenant, model, parameters, earlier messages (hashed).")


class CacheEvicted(Event):
    event_type: Literal["cache_evicted"] = "cache_evicted"
    cache_key: str
    key_id: str | None = None
    tenant: str | None = None
    model: str
    reason: Literal["expired", "capacity"]
    gateway_id: str | None = None


AnyEvent = Annotated[
    InferenceRequested
    | InferenceCancelled
    | TokenChunk
    | UsageRecorded
    | RequestCompleted
    | RequestRejected
    | WorkerHeartbeat
    | KeyState
    | TenantState
    | PriceSchedule
    | Experiment
    | LeaseRequested
    | LeaseGranted
    | BudgetAlert
    | LedgerEntry
    | CacheHit
    | CacheStored
    | CacheEvicted,
    Field(discriminator="event_type"),
]

_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def decode(raw: bytes | str) -> AnyEvent:
    """Parse any event from its wire form; raises pydantic.ValidationError if it is not one."""
    return _ADAPTER.validate_json(raw)
