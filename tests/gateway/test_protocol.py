"""Turning OpenAI bodies into inference events, and naming what is wrong with them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway import protocol
from gateway.exceptions import InvalidRequest
from schemas.openai import ChatCompletionRequest, CompletionRequest


def parse(raw: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise protocol.invalid(exc) from None


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "m", "messages": [{"role": "bad", "content": "x"}]}', "messages[0].role"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 5}', "stop"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
     b'"stream_options": {"include_usage": "yes"}}', "stream_options.include_usage"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": true}', "n"),
    (b'{"model": 3, "messages": [{"role": "user", "content": "x"}]}', "model"),
])
def test_invalid_fields_are_named(raw: bytes, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(raw)
    assert info.value.param == param


def test_unknown_fields_are_ignored_like_vllm_does() -> None:
    body = parse(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "foo": 1}')
    event = protocol.chat_request(body, 4, model="m", request_id="r", reply_topic="t",
                                   deadline=0.0)
    assert event.messages[0].content == "x"


def test_sampling_maps_onto_the_event() -> None:
    body = parse(b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", '
                 b'"text": "a"}, {"type": "text", "text": "b"}]}], "max_tokens": 9, '
                 b'"max_completion_tokens": 7, "stop": "END", "n": 2, "seed": 1}')
    event = protocol.chat_request(body, 4, model="m", request_id="r", reply_topic="t",
                                   deadline=0.0)
    assert event.messages[0].content == "a\nb"
    assert event.sampling.max_tokens == 7  # max_completion_tokens wins
    assert event.sampling.stop == ("END",)
    assert (event.sampling.n, event.sampling.seed) == (2, 1)


def test_batched_completion_prompts_are_refused() -> None:
    body = CompletionRequest.model_validate_json(b'{"model": "m", "prompt": ["a", "b"]}')
    with pytest.raises(InvalidRequest) as info:
        protocol.completion_request(body, 4, model="m", request_id="r", reply_topic="t",
                                   deadline=0.0)
    assert info.value.param == "prompt"
