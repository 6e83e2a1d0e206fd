"""From OpenAI requests to inference events and back to OpenAI responses."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from gateway.exceptions import InvalidRequest, UnsupportedMediaType
from schemas.events import InferenceRequested, Message, Sampling
from schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

Body = TypeVar("Body", bound=BaseModel)

_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none", "literal"}


def _param(loc: tuple[int | str, ...]) -> str | None:
    """`('messages', 0, 'role')` -> `messages[0].role`, dropping pydantic's union tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not ("[" in part or "-" in part or part[:1].isupper() or part in _TYPE_NAMES):
            out += f".{part}" if out else part
    return out or None


def invalid(exc: ValidationError) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    kind, param = err["type"], _param(tuple(err["loc"]))
    if kind == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON "
            f"({err['msg']}).")
    if kind == "model_type" and param is None:
        return InvalidRequest("The request body must be a JSON object.")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    return InvalidRequest(f"Invalid value for '{param}': {err['msg']}.", param=param)


async def parse(request: Request, model: type[Body]) -> Body:
    """Read and validate a JSON body: 415 for another media type, 400 naming the field."""
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"Unsupported content type '{media}'. Send the body as application/json.")
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise invalid(exc) from None


def _unsupported(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {what} is not supported by this server.", param=param,
                          code="unsupported_parameter")


def _common(body: ChatCompletionRequest | CompletionRequest, max_n: int) -> Sampling:
    if body.n is not None and body.n > max_n:
        raise InvalidRequest(f"Invalid value for 'n': at most {max_n} choices per request.",
                             param="n")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.",
                             param="stream_options")
    if body.logit_bias:
        raise _unsupported("logit_bias", "set to a non-empty map")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    max_tokens = body.max_tokens
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        max_tokens = body.max_completion_tokens
    return Sampling(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        n=body.n or 1,
        stop=stop,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
    )


def _messages(body: ChatCompletionRequest) -> tuple[Message, ...]:
    out = []
    for i, m in enumerate(body.messages):
        if isinstance(m.content, list):
            parts = []
            for j, part in enumerate(m.content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _unsupported(f"messages[{i}].content[{j}]",
                                       f"of type '{part.get('type')}' (only text)")
                parts.append(part["text"])
            content = "\n".join(parts)
        else:
            content = m.content or ""
        out.append(Message(role=m.role, content=content, name=m.name))
    return tuple(out)


def chat_request(body: ChatCompletionRequest, max_n: int, **route: object) -> InferenceRequested:
    """The InferenceRequested for a chat body, refusing what no worker can do yet. `route`
    has the fields the gateway decides: model, ids, reply topic, deadline, caller."""
    if body.logprobs or body.top_logprobs is not None:
        raise _unsupported("logprobs", "(log probabilities)")
    if body.tools or body.functions:
        raise _unsupported("tools", "(tool and function calling)")
    if body.tool_choice not in (None, "none") or body.function_call not in (None, "none"):
        raise _unsupported("tool_choice", "(tool and function calling)")
    if body.response_format is not None and body.response_format.type != "text":
        raise _unsupported("response_format", f"of type '{body.response_format.type}'")
    return InferenceRequested(
        kind="chat",
        messages=_messages(body),
        sampling=_common(body, max_n),
        stream=bool(body.stream),
        user=body.user,
        **route,  # type: ignore[arg-type]
    )


def completion_request(body: CompletionRequest, max_n: int, **route: object) -> InferenceRequested:
    if body.echo:
        raise _unsupported("echo", "set to true")
    if body.suffix:
        raise _unsupported("suffix", "(insertion)")
    if body.logprobs is not None:
        raise _unsupported("logprobs", "(log probabilities)")
    if body.best_of not in (None, 1, body.n):
        raise _unsupported("best_of", "other than n")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) > 1:
            raise _unsupported("prompt", "as a batch of several prompts")
        prompt = prompt[0]
    return InferenceRequested(
        kind="completion",
        prompt=prompt if isinstance(prompt, str) else tuple(prompt),  # type: ignore[arg-type]
        sampling=_common(body, max_n),
        stream=bool(body.stream),
        user=body.user,
        **route,  # type: ignore[arg-type]
    )


# As many inputs as OpenAI takes in one embeddings request.
MAX_EMBEDDING_INPUTS = 2048


def embedding_request(body: EmbeddingRequest, **route: object) -> InferenceRequested:
    """The InferenceRequested for an embeddings body: one input or a list of them, each a
    text or token ids, none empty."""
    given = body.input
    if isinstance(given, str) or (given and isinstance(given[0], int)):
        inputs: list[str | tuple[int, ...]] = [given if isinstance(given, str)
                                               else tuple(given)]  # type: ignore[arg-type]
    else:
        inputs = [i if isinstance(i, str) else tuple(i) for i in given]  # type: ignore[union-attr]
    if not inputs:
        raise InvalidRequest("'input' must not be an empty list.", param="input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(f"'input' has {len(inputs)} items; at most "
                             f"{MAX_EMBEDDING_INPUTS} per request.", param="input")
    for i, item in enumerate(inputs):
        if not item:
            param = "input" if len(inputs) == 1 else f"input[{i}]"
            raise InvalidRequest(f"'{param}' must not be empty.", param=param)
    return InferenceRequested(
        kind="embedding", inputs=tuple(inputs), dimensions=body.dimensions, user=body.user,
        **route,  # type: ignore[arg-type]
    )


def _tokens(text_or_ids: str | tuple[int, ...] | None) -> int:
    """A prompt's tokens, over-estimated at a token per three bytes of text."""
    if isinstance(text_or_ids, str):
        return len(text_or_ids.encode()) // 3 + 1
    return len(text_or_ids or ())


def reservation(event: InferenceRequested, default_max_tokens: int) -> int:
    """Tokens to hold for a request at admission: its prompt, over-estimated at a token per
    three bytes (usage corrects it), plus what it may generate per choice."""
    if event.kind == "embedding":
        return sum(map(_tokens, event.inputs))
    if event.kind == "chat":
        prompt = sum(len(m.content.encode()) // 3 + 4 for m in event.messages) + 8
    else:
        prompt = _tokens(event.prompt)
    s = event.sampling
    return prompt + s.n * (s.max_tokens or default_max_tokens)
