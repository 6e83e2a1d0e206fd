"""The OpenAI HTTP protocol: requests as clients send them, responses as the spec shapes them.

Request models accept fields they do not know (clients and SDKs send extras; like vLLM,
Sluice ignores them) but type-check every field they do know strictly, so a string where
a number belongs is a 400 naming the field rather than a silent coercion.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length"]


def _omit_none(value: object) -> bool:
    return value is None


def _omittable(default: Any = None) -> Any:
    """A field that is left out of the JSON when unset, as the spec requires for it."""
    return Field(default=default, exclude_if=_omit_none)


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- requests ---------------------------------------------------------------------------


class StreamOptions(_Request):
    include_usage: bool = False


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ResponseFormat(_Request):
    type: str


Stop = str | Annotated[list[str], Field(max_length=4)] | None
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
PositiveInt = Annotated[int, Field(ge=1)]


class _Sampling(_Request):
    """Fields chat and completions share, in the order OpenAI documents them."""

    model: str
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    max_tokens: PositiveInt | None = None
    n: PositiveInt | None = None
    presence_penalty: Penalty | None = None
    seed: int | None = None
    stop: Stop = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    """`POST /v1/chat/completions`."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    """`POST /v1/completions`."""

    prompt: str | Annotated[list[str], Field(min_length=1)] | Annotated[
        list[int], Field(min_length=1)
    ]
    best_of: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None


# -- responses --------------------------------------------------------------------------


class PromptTokensDetails(_Response):
    cached_tokens: int = 0


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Prompt tokens the engine found in its prefix cache, as OpenAI reports its own.
    prompt_tokens_details: PromptTokensDetails | None = None


class ResponseMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(_Response):
    index: int
    message: ResponseMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(_Response):
    role: Literal["assistant"] | None = _omittable()
    content: str | None = _omittable()


class ChatChunkChoice(_Response):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    # Present (null until the last chunk) only when stream_options.include_usage is set.
    usage: Usage | None = None


class CompletionChoice(_Response):
    text: str
    index: int
    logprobs: None = None
    finish_reason: FinishReason | None


class Completion(_Response):
    """A completions response; streamed completions are a sequence of these."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str  # a base64 string of little-endian float32 when asked
    index: int


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sluice"
    max_model_len: int | None = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorBody


def routing_error(status: int, method: str, path: str, detail: str) -> ErrorBody:
    """The body for a request no route takes (404, 405) or the framework refuses."""
    if status == 404:
        detail = f"Unknown path {method} {path}."
    elif status == 405:
        detail = f"Method {method} is not allowed on {path}."
    return ErrorBody(message=detail, type="invalid_request_error")


SERVER_ERROR = ErrorBody(message="The server had an error while processing your request.",
                         type="server_error")
