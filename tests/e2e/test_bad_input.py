"""Every bad input gets an OpenAI-shaped error with the right status, and serving goes on."""

from __future__ import annotations

import httpx
import openai
import pytest

from schemas import topics
from schemas.events import RequestRejected
from tests.conftest import ADMIN_KEY, MODEL, Gateway, start_gateway
from tests.events import for_request, matching, read_events
from tests.openai_spec import validate

HI = [{"role": "user", "content": "hi"}]


def _post(gateway: Gateway, content: bytes | str, **headers: str) -> httpx.Response:
    headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}",
               **headers}
    return httpx.post(f"{gateway.base_url}/chat/completions", content=content,
                      headers=headers, timeout=60)


def _error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    validate("ErrorResponse", r.json())
    assert r.headers["x-request-id"]
    return r.json()["error"]  # type: ignore[no-any-return]


CASES = [
    ("malformed json", b'{"model": ', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("missing messages", b'{"model": "%s"}' % MODEL.encode(), 400, "messages"),
    ("missing model", b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    ("ill-typed temperature",
     b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}'
     % MODEL.encode(), 400, "temperature"),
    ("empty messages", b'{"model": "%s", "messages": []}' % MODEL.encode(), 400, "messages"),
    ("ill-typed message role",
     b'{"model": "%s", "messages": [{"role": "wizard", "content": "hi"}]}' % MODEL.encode(),
     400, "messages[0].role"),
    ("temperature out of range",
     b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}'
     % MODEL.encode(), 400, "temperature"),
    ("n of zero",
     b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "n": 0}'
     % MODEL.encode(), 400, "n"),
    ("n too large",
     b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "n": 1000}'
     % MODEL.encode(), 400, "n"),
    ("five stop sequences",
     b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
     b'"stop": ["a", "b", "c", "d", "e"]}' % MODEL.encode(), 400, "stop"),
    ("tools", b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
     b'"tools": [{"type": "function", "function": {"name": "f"}}]}' % MODEL.encode(),
     400, "tools"),
    ("logprobs", b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
     b'"logprobs": true}' % MODEL.encode(), 400, "logprobs"),
    ("image content", b'{"model": "%s", "messages": [{"role": "user", "content": '
     b'[{"type": "image_url", "image_url": {"url": "x"}}]}]}' % MODEL.encode(),
     400, "messages[0].content[0]"),
    ("stream_options without stream",
     b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
     b'"stream_options": {"include_usage": true}}' % MODEL.encode(), 400, "stream_options"),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), CASES, ids=[c[0] for c in CASES])
def test_invalid_body(gateway: Gateway, client: openai.OpenAI, name: str, body: bytes,
                      status: int, param: str | None) -> None:
    error = _error(_post(gateway, body), status)
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param
        assert param.split("[")[0] in str(error["message"])


def test_ill_typed_field_is_named(gateway: Gateway, client: openai.OpenAI) -> None:
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], ' \
           b'"max_tokens": "ten"}' % MODEL.encode()
    error = _error(_post(gateway, body), 400)
    assert error["param"] == "max_tokens"
    assert "max_tokens" in str(error["message"])


def test_unknown_model(gateway: Gateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"  # type: ignore[index]


def test_prompt_longer_than_context(gateway: Gateway, client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=long)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:  # the same when streaming
        list(client.chat.completions.create(model=MODEL, messages=long, stream=True))
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5000)
    assert info.value.code == "context_length_exceeded"


def test_body_over_the_size_limit(gateway: Gateway, client: openai.OpenAI) -> None:
    big = b'{"model": "%s", "messages": [{"role": "user", "content": "%s"}]}' % (
        MODEL.encode(), b"x" * (3 * 1024 * 1024))
    error = _error(_post(gateway, big), 413)
    assert error["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit holds for a streamed body too
        yield big[: 1024 * 1024]
        yield big[1024 * 1024:]

    r = httpx.post(f"{gateway.base_url}/chat/completions", content=chunked(),
                   headers={"content-type": "application/json",
                            "authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    _error(r, 413)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type(gateway: Gateway, client: openai.OpenAI, content_type: str) -> None:
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % MODEL.encode()
    error = _error(_post(gateway, body, **{"content-type": content_type}), 415)
    assert error["code"] == "unsupported_media_type"


def test_unknown_path_and_method(gateway: Gateway, client: openai.OpenAI) -> None:
    _error(httpx.get(f"{gateway.base_url}/nope"), 404)
    _error(httpx.get(f"{gateway.base_url}/chat/completions"), 405)


def test_missing_unknown_and_malformed_keys_are_401(gateway: Gateway) -> None:
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % MODEL.encode()
    for auth in (None, "Bearer sk-sluice-0000000000000000-nope", "Basic abc", "Bearer x"):
        headers = {"content-type": "application/json"}
        if auth:
            headers["authorization"] = auth
        r = httpx.post(f"{gateway.base_url}/chat/completions", content=body, headers=headers)
        error = _error(r, 401)
        assert error["code"] in ("invalid_api_key", "missing_api_key")


def test_rejections_are_events(bootstrap: str, gateway: Gateway, client: openai.OpenAI) -> None:
    r = _post(gateway, b'{"model": ')
    rid = r.headers["x-request-id"]
    events = matching(read_events(bootstrap, topics.REQUESTS, for_request(rid)), rid)
    assert len(events) == 1 and isinstance(events[0], RequestRejected)
    assert events[0].status_code == 400


def test_still_serving_after_bad_input(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=30,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in English."}])
    assert "Paris" in reply.choices[0].message.content


def test_no_live_worker_is_503(stack_env: dict[str, str], worker) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway("gateway-ghost", stack_env, models="ghost-model")
    try:
        r = httpx.post(f"{gw.base_url}/chat/completions", timeout=30,
                       json={"model": "ghost-model", "messages": HI},
                       headers={"authorization": f"Bearer {ADMIN_KEY}"})
        error = _error(r, 503)
        assert error["code"] == "no_live_worker"
        assert r.headers["retry-after"]
        assert httpx.get(f"{gw.url}/ready").status_code == 503
    finally:
        gw.proc.stop(30)


def test_admission_timeout_is_503(stack_env: dict[str, str], worker) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway("gateway-tight", stack_env, max_in_flight_per_model="1",
                       admission_timeout="0.5")
    try:
        import time

        deadline = time.monotonic() + 15
        while gw.live_workers() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        story = [{"role": "user", "content": "Write a very long story about a dragon."}]
        long = {"model": MODEL, "messages": story, "max_tokens": 300, "stream": True,
                "temperature": 0}
        auth = {"authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(timeout=120, headers=auth) as http, \
                http.stream("POST", f"{gw.base_url}/chat/completions", json=long) as held:
            assert held.status_code == 200
            r = http.post(f"{gw.base_url}/chat/completions",
                          json={"model": MODEL, "messages": HI, "max_tokens": 5})
            error = _error(r, 503)
            assert error["code"] == "admission_timeout"
            assert r.headers["retry-after"]
        rid = r.headers["x-request-id"]
        events = matching(read_events(stack_env["SLUICE_KAFKA_BOOTSTRAP"], topics.REQUESTS,
                                      for_request(rid)), rid)
        assert events and events[0].status_code == 503  # type: ignore[union-attr]
    finally:
        gw.proc.stop(30)
