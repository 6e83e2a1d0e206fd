"""The response cache's decisions and its bounded memory, without a broker."""

from __future__ import annotations

import time

import numpy as np

from gateway.cache import ResponseCache, cache_key, replay, semantic_scope
from gateway.embedder import encode_vector, unit
from gateway.transcript import Transcript
from schemas.events import (
    CachedChoice,
    CacheEvicted,
    CacheStored,
    Event,
    InferenceRequested,
    Message,
    Sampling,
    TokenUsage,
)
from schemas.tiers import CachePolicy

EXACT = CachePolicy(mode="exact", ttl_s=60)


def _request(tenant: str = "acme", question: str = "hi", **sampling: object
             ) -> InferenceRequested:
    return InferenceRequested(
        request_id=f"r-{time.monotonic_ns()}", model="m", kind="chat", tenant=tenant,
        messages=(Message(role="user", content=question),),
        sampling=Sampling(**{"temperature": 0.0, "max_tokens": 8, **sampling}),  # type: ignore[arg-type]
        reply_topic="t", deadline=time.time() + 60)


def _cache(max_bytes: int = 1_000_000) -> tuple[ResponseCache, list[Event]]:
    sent: list[Event] = []
    cache = ResponseCache(None, "gw", max_bytes=max_bytes,  # type: ignore[arg-type]
                          publish=lambda e, k: sent.append(e))
    cache.caught_up.set()
    return cache, sent


def _answered(text: str = "Blue.") -> Transcript:
    t = Transcript(1.0)
    t.texts[0].append(text)
    t.finish[0] = "stop"
    t.usage = TokenUsage(prompt_tokens=5, completion_tokens=2)
    return t


def test_the_key_is_the_tenant_and_what_shapes_the_answer() -> None:
    a = _request()
    assert cache_key(a) == cache_key(_request().model_copy(
        update={"stream": True, "user": "u", "key_id": "other-key-same-tenant"}))
    assert cache_key(a) != cache_key(_request(tenant="globex"))
    assert cache_key(a) != cache_key(_request(question="hello"))
    assert cache_key(a) != cache_key(_request(max_tokens=9))


def test_a_stored_answer_is_found_and_replayed() -> None:
    cache, sent = _cache()
    req = _request()
    miss = cache.lookup(req, EXACT, None)
    assert miss.state == "miss" and miss.store
    cache.store(req, miss, _answered())
    assert isinstance(sent[-1], CacheStored) and sent[-1].expires_at > time.time() + 50
    hit = cache.lookup(_request(), EXACT, None)
    assert hit.state == "hit" and hit.entry is not None
    t = replay(hit.entry, 1.0)
    assert t.text(0) == "Blue." and t.finish[0] == "stop" and t.usage is not None
    assert t.usage.completion_tokens == 2


def test_what_is_not_looked_up_or_not_kept() -> None:
    cache, sent = _cache()
    req = _request()
    assert cache.lookup(req, CachePolicy(), None).state == "bypass"
    assert cache.lookup(req, EXACT, "no-store").state == "bypass"
    assert cache.lookup(_request(temperature=0.7), EXACT, None).state == "bypass"
    assert cache.lookup(_request(temperature=0.7, seed=3), EXACT, None).state == "miss"
    cut = _answered()
    cut.finish[0] = "abort"
    cache.store(req, cache.lookup(req, EXACT, None), cut)
    assert not sent and len(cache) == 0
    cache.store(req, cache.lookup(req, EXACT, None), _answered())
    assert cache.lookup(req, EXACT, "no-cache").state == "miss"  # asked not to read it
    assert cache.lookup(req, EXACT, "No-Cache, max-age=0").entry is None


def _entry(key: str, size: int, expires_in: float = 60.0) -> CacheStored:
    return CacheStored(request_id=key, cache_key=key, model="m", tenant="acme",
                       size_bytes=size, expires_at=time.time() + expires_in,
                       choices=(CachedChoice(text="x" * size, finish_reason="stop"),))


def test_memory_is_bounded_least_recently_used_first() -> None:
    cache, sent = _cache(max_bytes=3 * (1000 + 512))
    for key in ("a", "b", "c"):
        cache.put(_entry(key, 1000))
    assert cache.get("a") is not None  # now the most recently used
    cache.put(_entry("d", 1000))
    assert cache.get("b") is None and cache.get("a") and cache.get("c") and cache.get("d")
    evicted = [e for e in sent if isinstance(e, CacheEvicted)]
    assert [(e.cache_key, e.reason) for e in evicted] == [("b", "capacity")]
    assert cache.bytes <= cache.max_bytes


def test_an_expired_entry_is_dropped_when_looked_up() -> None:
    cache, sent = _cache()
    cache.put(_entry("old", 10, expires_in=0.05))
    assert cache.get("old", now=time.time() + 1) is None
    assert [(e.cache_key, e.reason) for e in sent if isinstance(e, CacheEvicted)] == [
        ("old", "expired")]
    cache.put(_entry("gone", 10, expires_in=-1))  # replayed after it expired: never kept
    assert len(cache) == 0


def test_replaying_the_topic_rebuilds_it_quietly() -> None:
    cache, sent = _cache(max_bytes=2 * (100 + 512))
    cache.caught_up.clear()
    for key in ("a", "b", "c"):
        cache.on_record(key.encode(), _entry(key, 100).encode())
    assert len(cache) == 2 and cache.get("a") is None and not sent


def _vector(*xs: float) -> np.ndarray:
    return unit(np.array(xs, dtype="<f4"))


def test_semantic_neighbours_share_a_scope_and_numbers() -> None:
    a, b = _request(question="What is 2 + 2?"), _request(question="What's 2 + 2?")
    assert semantic_scope(a) == semantic_scope(b)
    assert semantic_scope(a) != semantic_scope(_request(question="What is 2 + 3?"))
    assert semantic_scope(a) != semantic_scope(_request(tenant="globex", question="What is 2 + 2?"))
    assert semantic_scope(a) != semantic_scope(_request(question="What is 2 + 2?", max_tokens=3))


def test_the_nearest_entry_of_a_scope_and_its_similarity() -> None:
    cache, _ = _cache()
    for key, vector in (("x", _vector(1, 0, 0)), ("y", _vector(0, 1, 0))):
        cache.put(_entry(key, 10).model_copy(update={
            "scope": "s", "embedding": encode_vector(vector)}))
    key, similarity = cache.nearest("s", _vector(0.1, 1, 0))
    assert key == "y" and 0.99 < similarity < 1.0
    assert cache.nearest("other", _vector(1, 0, 0)) == (None, -1.0)
    assert cache.get("y") is not None
    cache._drop("y", "expired")
    assert cache.nearest("s", _vector(0.1, 1, 0))[0] == "x"
    cache._drop("x", "expired")
    assert cache.nearest("s", _vector(1, 0, 0)) == (None, -1.0) and not cache._scopes
