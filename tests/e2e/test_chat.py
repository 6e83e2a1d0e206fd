"""Chat and completions through the real stack: gateway -> Kafka -> vLLM worker -> gateway."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from schemas import topics
from schemas.events import RequestCompleted, UsageRecorded
from tests.conftest import EMBEDDING_MODEL, MODEL, Gateway, start_gateway
from tests.events import for_request, matching, read_events
from tests.openai_spec import validate

# Every token of its answer leads the next by 0.75 nats or more in bf16 and float32; the
# bare question starts with a near tie that either answer may take (docs/benchmarks.md).
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in English."}]


def test_known_fact_at_temperature_zero(client: openai.OpenAI) -> None:
    """Guards against an engine that runs but computes wrong tokens (compiled mode on CPU)."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=30)
    reply = raw.parse()
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert raw.headers["x-request-id"]
    assert reply.id == f"chatcmpl-{raw.headers['x-request-id']}"
    validate("CreateChatCompletionResponse", json.loads(raw.text))


def test_stream_joins_to_the_same_text(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, seed=7, max_tokens=40)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, seed=7, max_tokens=40, stream=True)
    pieces = []
    for chunk in stream:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    assert "".join(pieces) == whole.choices[0].message.content
    assert whole.choices[0].message.content


def test_usage_is_the_tokenizers_count(client: openai.OpenAI, home) -> None:  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(home / "models" / MODEL)
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                           max_tokens=30)
    prompt = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=True)
    prompt_ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    completion_ids = tokenizer.encode(reply.choices[0].message.content,
                                      add_special_tokens=False)
    assert reply.usage.prompt_tokens == len(prompt_ids)
    # The engine also counts the end-of-turn token it stopped on, which is not text.
    assert reply.usage.completion_tokens in (len(completion_ids), len(completion_ids) + 1)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_stream_usage_when_asked(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_max_tokens_is_honoured(client: openai.OpenAI) -> None:
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    for kwargs in ({"max_tokens": 5}, {"max_completion_tokens": 5}):
        reply = client.chat.completions.create(model=MODEL, messages=story, temperature=0,
                                               **kwargs)
        assert reply.usage.completion_tokens == 5
        assert reply.choices[0].finish_reason == "length"


def test_stop_sequence_is_honoured(client: openai.OpenAI) -> None:
    free = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                          max_tokens=30)
    assert "Paris" in free.choices[0].message.content
    stopped = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                             max_tokens=30, stop=["Paris"])
    text = stopped.choices[0].message.content
    assert "Paris" not in text
    assert free.choices[0].message.content.startswith(text)
    assert stopped.choices[0].finish_reason == "stop"


def test_sampling_parameters_are_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0.7, top_p=0.9, seed=3, n=2,
        presence_penalty=0.5, frequency_penalty=0.5, user="alice", max_tokens=12)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content for c in reply.choices)
    assert reply.usage.completion_tokens <= 24


def test_sixteen_concurrent_requests_complete(gateway: Gateway, client: openai.OpenAI,
                                              api_key: str) -> None:
    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0,
                                     timeout=300)
        async def one(i: int) -> str:
            reply = await aclient.chat.completions.create(
                model=MODEL, temperature=0, max_tokens=24, stream=i % 2 == 0,
                messages=[{"role": "user", "content": f"Say the number {i} in words."}])
            if i % 2 == 0:
                return "".join([c.choices[0].delta.content or "" async for c in reply
                                if c.choices])
            return reply.choices[0].message.content  # type: ignore[no-any-return]

        try:
            return await asyncio.gather(*(one(i) for i in range(16)))
        finally:
            await aclient.close()

    answers = asyncio.run(run())
    assert len(answers) == 16
    assert all(answers)


def test_completions_endpoint(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=5)
    validate("CreateCompletionResponse", json.loads(raw.text))
    reply = raw.parse()
    assert "Paris" in reply.choices[0].text
    assert reply.usage.completion_tokens == 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=5,
        stream=True) if c.choices)
    assert streamed == reply.choices[0].text


def test_models_from_heartbeats(gateway: Gateway, client: openai.OpenAI, api_key: str) -> None:
    assert httpx.get(f"{gateway.base_url}/models").status_code == 401
    r = httpx.get(f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {api_key}"})
    validate("ListModelsResponse", r.json())
    # The session's worker serves its engine under two aliases too (see conftest); the
    # embedding worker, once another test started it, its model.
    assert sorted(m.id for m in client.models.list() if m.id != EMBEDDING_MODEL) == sorted(
        [MODEL, "smollm2-creative", "smollm2-precise"])
    assert r.headers["x-request-id"]


def test_health_ready_and_metrics(gateway: Gateway, client: openai.OpenAI) -> None:
    assert httpx.get(f"{gateway.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/ready")
    assert ready.status_code == 200
    assert ready.json()["workers"][MODEL] >= 1
    client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=3)
    text = httpx.get(f"{gateway.url}/metrics").text
    for name in ("sluice_requests_total", "sluice_request_latency_seconds_bucket",
                 "sluice_time_to_first_token_seconds_bucket", "sluice_tokens_total",
                 "sluice_requests_in_flight"):
        assert name in text
    assert f'sluice_tokens_total{{kind="completion",model="{MODEL}"}}' in text


def test_outcomes_and_usage_are_events(bootstrap: str, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=30, user="bob")
    rid = raw.headers["x-request-id"]
    usage = raw.parse().usage
    completed = matching(read_events(bootstrap, topics.REQUESTS, for_request(rid)), rid)
    recorded = matching(read_events(bootstrap, topics.USAGE, for_request(rid)), rid)
    assert len(completed) == 1 and isinstance(completed[0], RequestCompleted)
    assert completed[0].status_code == 200 and completed[0].user == "bob"
    assert completed[0].completion_tokens == usage.completion_tokens
    assert len(recorded) == 1 and isinstance(recorded[0], UsageRecorded)
    assert recorded[0].status == "completed"
    assert recorded[0].prompt_tokens == usage.prompt_tokens
    assert recorded[0].completion_tokens == usage.completion_tokens


@pytest.mark.parametrize("streaming", [True, False])
def test_disconnect_stops_generation(bootstrap: str, gateway: Gateway, client: openai.OpenAI,
                                     streaming: bool, api_key: str) -> None:
    body = {"model": MODEL, "temperature": 0, "max_tokens": 1500, "stream": streaming,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {api_key}"}) as http:
        if streaming:
            with http.stream("POST", f"{gateway.base_url}/chat/completions", json=body) as r:
                rid = r.headers["x-request-id"]
                seen = 0
                for line in r.iter_lines():
                    seen += line.startswith("data: ")
                    if seen >= 5:
                        break  # leaving the block closes the connection mid-stream
        else:
            try:
                http.post(f"{gateway.base_url}/chat/completions", json=body, timeout=2.0)
            except httpx.ReadTimeout:
                pass
            rid = None
    if rid is None:  # find the non-streaming request by its outcome event
        events = read_events(bootstrap, topics.REQUESTS, lambda es: any(
            isinstance(e, RequestCompleted) and e.disconnected and not e.stream for e in es))
        rid = next(e.request_id for e in events
                   if isinstance(e, RequestCompleted) and e.disconnected and not e.stream)
    started = time.monotonic()
    recorded = matching(read_events(bootstrap, topics.USAGE, for_request(rid), timeout=30), rid)
    assert len(recorded) == 1
    usage = recorded[0]
    assert isinstance(usage, UsageRecorded)
    assert usage.status == "cancelled"
    assert 0 < usage.completion_tokens < 1500
    # Generation stopped well before the 1500 tokens it would have taken minutes to make.
    assert time.monotonic() - started < 30


def test_two_gateways_side_by_side(stack_env: dict[str, str], gateway: Gateway,
                                   client: openai.OpenAI, api_key: str) -> None:
    second = start_gateway("gateway-2", stack_env)
    try:
        assert second.port != gateway.port
        other = openai.OpenAI(base_url=second.base_url, api_key=api_key, max_retries=0)

        async def both() -> list[str]:
            a = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)
            b = openai.AsyncOpenAI(base_url=second.base_url, api_key=api_key, max_retries=0)
            replies = await asyncio.gather(*(
                c.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                          max_tokens=20) for c in (a, b, a, b)))
            await a.close()
            await b.close()
            return [r.choices[0].message.content for r in replies]

        wait_ready = time.monotonic() + 15
        while second.live_workers() < 1 and time.monotonic() < wait_ready:
            time.sleep(0.2)
        answers = asyncio.run(both())
        assert all("Paris" in a for a in answers)
        assert MODEL in {m.id for m in other.models.list().data}
    finally:
        second.proc.stop(30)
