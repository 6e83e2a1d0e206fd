"""The response cache through the real stack: stored through one replica, hit on another,
never across tenants, and every step an event on `sluice.cache`."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from schemas import topics
from schemas.events import CacheHit, CacheStored, LedgerEntry, RequestCompleted
from tests.conftest import EMBEDDING_MODEL, MODEL, Gateway, Proc, admin, create_key, wait_until
from tests.events import read_events
from tests.openai_spec import validate

EXACT = {"mode": "exact", "ttl_s": 600}


def _body(question: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": question}], **extra}


def _question() -> str:
    """A prompt no other test sends, so its first answer is a miss."""
    return f"Name a colour. ({uuid.uuid4().hex[:6]})"


def _post(gw: Gateway, secret: object, body: dict[str, object], **headers: str
          ) -> httpx.Response:
    r = httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=120,
                   headers={"Authorization": f"Bearer {secret}", **headers})
    assert r.status_code == 200, r.text
    return r


def _stream(gw: Gateway, secret: object, body: dict[str, object]) -> tuple[str, list[dict]]:
    """The cache header and the stream's chunks."""
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", timeout=120,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}},
                      headers={"Authorization": f"Bearer {secret}"}) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        return r.headers["x-sluice-cache"], chunks


@pytest.fixture(scope="module")
def cached_key(gateway: Gateway, worker: Proc) -> dict[str, object]:
    return create_key(gateway, f"cache-{uuid.uuid4().hex[:6]}", tier="enterprise", cache=EXACT)


def test_a_repeat_is_a_hit_on_another_replica_with_the_same_body(
        bootstrap: str, gateway: Gateway, gateway_b: Gateway, cached_key: dict[str, object]
        ) -> None:
    body = _body(_question())
    first = _post(gateway, cached_key["secret"], body)
    assert first.headers["x-sluice-cache"] == "miss"
    stored = read_events(bootstrap, topics.CACHE, lambda ev: any(
        isinstance(e, CacheStored) and e.request_id == first.headers["x-request-id"]
        for e in ev))
    entry = next(e for e in stored if isinstance(e, CacheStored)
                 and e.request_id == first.headers["x-request-id"])
    assert entry.tenant == cached_key["tenant"] and entry.model == MODEL

    def hit() -> httpx.Response | None:
        r = _post(gateway_b, cached_key["secret"], body)
        return r if r.headers["x-sluice-cache"] == "hit" else None

    second = None
    for _ in range(50):  # the other replica follows the topic; give it a moment
        if (second := hit()) is not None:
            break
    assert second is not None, "the second replica never served the stored answer"
    a, b = first.json(), second.json()
    validate("CreateChatCompletionResponse", b)
    assert b["choices"] == a["choices"] and b["usage"]["completion_tokens"] == \
        a["usage"]["completion_tokens"]
    assert b["id"] != a["id"] and b["id"] == f"chatcmpl-{second.headers['x-request-id']}"
    assert "x-ratelimit-remaining-requests" in second.headers  # a hit is still a request

    rid = second.headers["x-request-id"]
    hits = read_events(bootstrap, topics.CACHE, lambda ev: any(
        isinstance(e, CacheHit) and e.request_id == rid for e in ev))
    cache_hit = next(e for e in hits if isinstance(e, CacheHit) and e.request_id == rid)
    assert cache_hit.stored_request_id == entry.request_id
    assert cache_hit.gateway_id == "gateway-b"
    assert cache_hit.completion_tokens == a["usage"]["completion_tokens"]
    outcomes = read_events(bootstrap, topics.REQUESTS, lambda ev: any(
        isinstance(e, RequestCompleted) and e.request_id == rid for e in ev))
    done = next(e for e in outcomes if isinstance(e, RequestCompleted) and e.request_id == rid)
    assert done.cache == "hit" and done.status_code == 200


def test_a_streamed_hit_has_the_shape_of_a_fresh_stream(
        gateway: Gateway, cached_key: dict[str, object]) -> None:
    body = _body(_question())
    state, fresh = _stream(gateway, cached_key["secret"], body)
    assert state == "miss"
    state, cached = _stream(gateway, cached_key["secret"], body)
    assert state == "hit"
    for chunk in cached:
        validate("CreateChatCompletionStreamResponse", chunk)

    def text(chunks: list[dict]) -> str:
        return "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"])

    assert text(cached) == text(fresh) and text(cached)
    assert cached[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["finish_reason"] for ch in cached for c in ch["choices"] if c["finish_reason"]]
    assert finishes == [c["finish_reason"] for ch in fresh for c in ch["choices"]
                        if c["finish_reason"]]
    assert cached[-1]["usage"] == fresh[-1]["usage"]
    # a hit stored by a stream serves a request that does not stream, and the reverse
    whole = _post(gateway, cached_key["secret"], body)
    assert whole.headers["x-sluice-cache"] == "hit"
    assert whole.json()["choices"][0]["message"]["content"] == text(fresh)


def test_tenants_never_share_an_entry(gateway: Gateway, cached_key: dict[str, object]) -> None:
    body = _body(_question())
    assert _post(gateway, cached_key["secret"], body).headers["x-sluice-cache"] == "miss"
    assert _post(gateway, cached_key["secret"], body).headers["x-sluice-cache"] == "hit"
    other = create_key(gateway, f"cache-{uuid.uuid4().hex[:6]}", tier="enterprise", cache=EXACT)
    assert _post(gateway, other["secret"], body).headers["x-sluice-cache"] == "miss"
    # a key of the same tenant shares its tenant's entries
    sibling = create_key(gateway, str(cached_key["tenant"]), tier="enterprise", cache=EXACT)
    assert _post(gateway, sibling["secret"], body).headers["x-sluice-cache"] == "hit"


def test_what_bypasses_the_cache(gateway: Gateway, cached_key: dict[str, object],
                                 api_key: str) -> None:
    secret = cached_key["secret"]
    body = _body(_question())
    assert _post(gateway, secret, body, **{"Cache-Control": "no-store"}).headers[
        "x-sluice-cache"] == "bypass"
    assert _post(gateway, secret, body).headers["x-sluice-cache"] == "miss"  # nothing stored
    # no-cache: answered fresh, and what it answers is stored again
    assert _post(gateway, secret, body, **{"Cache-Control": "no-cache"}).headers[
        "x-sluice-cache"] == "miss"
    assert _post(gateway, secret, body).headers["x-sluice-cache"] == "hit"
    # not reproducible: sampled without a seed
    sampled = _body(_question(), temperature=0.8)
    for _ in range(2):
        assert _post(gateway, secret, sampled).headers["x-sluice-cache"] == "bypass"
    seeded = _body(_question(), temperature=0.8, seed=11)
    assert _post(gateway, secret, seeded).headers["x-sluice-cache"] == "miss"
    assert _post(gateway, secret, seeded).headers["x-sluice-cache"] == "hit"
    # other parameters make another entry
    assert _post(gateway, secret, {**seeded, "max_tokens": 5}).headers[
        "x-sluice-cache"] == "miss"
    # a key whose tenant never turned the cache on
    plain = _body(_question())
    for _ in range(2):
        assert _post(gateway, api_key, plain).headers["x-sluice-cache"] == "bypass"


def test_the_admin_api_sets_the_policy_per_key_or_per_tenant(
        gateway: Gateway, worker: Proc) -> None:
    tenant = f"cache-{uuid.uuid4().hex[:6]}"
    key = create_key(gateway, tenant, tier="enterprise")
    assert key["cache"] is None
    body = _body(_question())
    assert _post(gateway, key["secret"], body).headers["x-sluice-cache"] == "bypass"
    with admin(gateway) as http:
        r = http.patch(f"/v1/admin/tenants/{tenant}", json={"cache": EXACT})
        assert r.status_code == 200 and r.json()["cache"] == {**EXACT, "similarity": 0.95}
    assert _post(gateway, key["secret"], body).headers["x-sluice-cache"] == "miss"
    assert _post(gateway, key["secret"], body).headers["x-sluice-cache"] == "hit"
    with admin(gateway) as http:  # the key's own setting wins over its tenant's
        r = http.patch(f"/v1/admin/keys/{key['key_id']}", json={"cache": {"mode": "off"}})
        assert r.status_code == 200 and r.json()["cache"]["mode"] == "off"
    assert _post(gateway, key["secret"], body).headers["x-sluice-cache"] == "bypass"


@pytest.mark.parametrize("cache", [
    {"mode": "always"}, {"mode": "exact", "ttl_s": 0}, {"mode": "exact", "ttl_s": "60"},
    {"mode": "exact", "colour": "blue"}, "exact", {"mode": "semantic", "similarity": 0.2},
    {"mode": "semantic", "similarity": 1.5},
])
def test_a_bad_policy_is_refused(gateway: Gateway, cache: object) -> None:
    with admin(gateway) as http:
        r = http.post("/v1/admin/keys", json={"tenant": "cache-bad", "cache": cache})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "cache" in (error["param"] or "")


def test_a_hit_is_billed_at_the_models_cache_price(
        bootstrap: str, gateway: Gateway, stack_env: dict[str, str],
        cached_key: dict[str, object]) -> None:
    with admin(gateway) as http:
        r = http.put(f"/v1/admin/prices/{MODEL}", json={
            "input_micros_per_million": 1_000_000, "output_micros_per_million": 2_000_000,
            "cache_hit_micros_per_million": 250_000})
        assert r.status_code == 200, r.text
    version = r.json()["versions"][-1]
    assert version["cache_hit_micros_per_million"] == 250_000

    def billed_with_it() -> bool:
        got = httpx.get(f"{stack_env['SLUICE_STREAMS_URL']}/prices/{MODEL}", timeout=5)
        return got.status_code == 200 and got.json()["versions"][-1] == version

    wait_until(billed_with_it, 30, "the streams app to see the new price")
    body = _body(_question())
    fresh = _post(gateway, cached_key["secret"], body).json()
    hit = _post(gateway, cached_key["secret"], body)
    assert hit.headers["x-sluice-cache"] == "hit"
    rid = hit.headers["x-request-id"]
    entries = read_events(bootstrap, topics.LEDGER, lambda ev: any(
        isinstance(e, LedgerEntry) and e.request_id == rid for e in ev), 30)
    entry = next(e for e in entries if isinstance(e, LedgerEntry) and e.request_id == rid)
    tokens = fresh["usage"]["prompt_tokens"] + fresh["usage"]["completion_tokens"]
    assert entry.price_version == version["version"]
    assert (entry.prompt_tokens, entry.completion_tokens, entry.cache_hit_tokens) == (
        0, 0, tokens)
    assert entry.cache_hit_micros == (tokens * 250_000 + 500_000) // 1_000_000
    assert entry.cost_micros == entry.cache_hit_micros


SEMANTIC = {"mode": "semantic", "ttl_s": 600}


def _hit_event(bootstrap: str, request_id: str) -> CacheHit:
    events = read_events(bootstrap, topics.CACHE, lambda ev: any(
        isinstance(e, CacheHit) and e.request_id == request_id for e in ev))
    return next(e for e in events if isinstance(e, CacheHit) and e.request_id == request_id)


def test_a_semantic_key_reuses_the_answer_to_a_paraphrase_and_nothing_else(
        bootstrap: str, gateway: Gateway, worker: Proc, embedder: Proc) -> None:
    tag = uuid.uuid4().hex[:6]
    key = create_key(gateway, f"cache-{tag}", tier="enterprise", cache=SEMANTIC)
    secret = key["secret"]
    # the embedding worker has joined its group and answers (its first answer can take
    # longer than a lookup waits, which then stays exact)
    r = httpx.post(f"{gateway.base_url}/embeddings", timeout=120, json={
        "model": EMBEDDING_MODEL, "input": "ready?"}, headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text

    def ask(question: str, **extra: object) -> httpx.Response:
        return _post(gateway, secret, _body(question, **extra))

    first = ask(f"What is the capital city of France? (ref {tag})")
    assert first.headers["x-sluice-cache"] == "miss"
    again = ask(f"What's the capital city of France? (ref {tag})")
    assert again.headers["x-sluice-cache"] == "hit"
    assert again.json()["choices"] == first.json()["choices"]
    hit = _hit_event(bootstrap, again.headers["x-request-id"])
    assert hit.similarity is not None and 0.95 <= hit.similarity < 1.0
    assert hit.stored_request_id == first.headers["x-request-id"]
    # near in meaning is not the same question: another country, other numbers, other
    # parameters, another tenant
    assert ask(f"What is the capital city of Germany? (ref {tag})").headers[
        "x-sluice-cache"] == "miss"
    assert ask(f"What is 12 + 30? (ref {tag})").headers["x-sluice-cache"] == "miss"
    assert ask(f"What is 12 + 31? (ref {tag})").headers["x-sluice-cache"] == "miss"
    assert ask(f"What's the capital city of France? (ref {tag})", max_tokens=5).headers[
        "x-sluice-cache"] == "miss"
    stranger = create_key(gateway, f"cache-other-{tag}", tier="enterprise", cache=SEMANTIC)
    assert _post(gateway, stranger["secret"], _body(
        f"What's the capital city of France? (ref {tag})")).headers["x-sluice-cache"] == "miss"
    # an exact key never answers by similarity
    exact = create_key(gateway, f"cache-{tag}", tier="enterprise", cache=EXACT)
    assert _post(gateway, exact["secret"], _body(
        f"What is the capital of France? (ref {tag})")).headers["x-sluice-cache"] == "miss"
    # the gateway times each lookup, the embedding included, by mode and outcome
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    for mode, outcome in (("semantic", "hit"), ("semantic", "miss"), ("exact", "miss")):
        assert f'sluice_cache_lookup_seconds_count{{mode="{mode}",outcome="{outcome}"}}' \
            in metrics
