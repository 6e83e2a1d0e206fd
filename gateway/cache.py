"""The response cache: answers to reproducible requests, reused for the same tenant.

A request may be answered from the cache when its answer is reproducible (temperature 0,
or a `seed`), its key's policy allows (`CachePolicy`, the key's or its tenant's), and the
client did not say `Cache-Control: no-cache` (do not read) or `no-store` (neither read
nor write). Entries are keyed by the tenant and every part of the request that shapes
the answer, so one tenant never receives another's.

A `semantic` key's chat that misses exactly is embedded (its last message, by a worker of
the embedding model) and answered by the nearest entry of its scope if similar enough:
the same tenant, model, parameters, earlier messages and numbers in the last one.

Every stored entry is a `CacheStored` event on `sluice.cache`, whole; each replica
rebuilds its cache from the topic at start and follows it, so an answer stored through
one replica is a hit on all of them. Memory is bounded (LRU by bytes) and entries expire
at their TTL; a replica's own evictions are `CacheEvicted` events, its hits `CacheHit`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from aiokafka import AIOKafkaConsumer

from gateway.embedder import PromptEmbedder, decode_vector, encode_vector
from gateway.follow import Follower
from gateway.transcript import Transcript
from schemas import topics
from schemas.events import (
    CachedChoice,
    CacheEvicted,
    CacheHit,
    CacheState,
    CacheStored,
    Event,
    InferenceRequested,
    TokenUsage,
    UsageRecorded,
)
from schemas.tiers import CachePolicy

HEADER = "x-sluice-cache"


def reproducible(event: InferenceRequested) -> bool:
    """Whether the engine gives this request the same answer every time."""
    s = event.sampling
    return event.kind != "embedding" and (s.temperature == 0 or s.seed is not None)


def cache_key(event: InferenceRequested) -> str:
    """The tenant and everything that shapes the answer; not how it is delivered."""
    shape = event.model_dump(mode="json", include={"tenant", "model", "kind", "messages",
                                                   "prompt", "sampling"})
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def semantic_scope(event: InferenceRequested) -> str:
    """What a semantic neighbour must share: the exact key's parts but the last message's
    words, plus the numbers in it (embeddings barely tell "2 + 2" from "2 + 3")."""
    *earlier, last = event.messages
    shape = event.model_dump(mode="json", include={"tenant", "model", "sampling"})
    shape["earlier"] = [m.model_dump(mode="json") for m in earlier]
    shape["last"] = {"role": last.role, "numbers": _NUMBER.findall(last.content)}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the cache decided for one request."""

    state: CacheState
    key: str | None = None
    entry: CacheStored | None = None
    store: bool = False
    ttl_s: int = 0
    scope: str | None = None  # semantic lookups only: where it looked,
    vector: np.ndarray | None = None  # with the last message's embedding
    similarity: float | None = None  # and how near the entry it found is


def directives(cache_control: str | None) -> set[str]:
    return {d.strip().lower() for d in (cache_control or "").split(",") if d.strip()}


class ResponseCache(Follower):
    topic = topics.CACHE

    def __init__(self, consumer: AIOKafkaConsumer, gateway_id: str, *, max_bytes: int,
                 publish: Callable[[Event, str], None] | None = None) -> None:
        super().__init__(consumer)
        self.gateway_id = gateway_id
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, CacheStored] = OrderedDict()
        self._scopes: dict[str, dict[str, np.ndarray]] = {}  # semantic: scope -> key -> vector
        self._publish = publish

    def __len__(self) -> int:
        return len(self._entries)

    # -- the request path ---------------------------------------------------------------

    def lookup(self, event: InferenceRequested, policy: CachePolicy,
               cache_control: str | None) -> Lookup:
        asked = directives(cache_control)
        if policy.mode == "off" or "no-store" in asked or not reproducible(event):
            return Lookup("bypass")
        key = cache_key(event)
        entry = None if "no-cache" in asked else self.get(key)
        if entry is not None:
            return Lookup("hit", key, entry)
        return Lookup("miss", key, store=True, ttl_s=policy.ttl_s)

    async def similar(self, event: InferenceRequested, found: Lookup, policy: CachePolicy,
                      cache_control: str | None, embedder: PromptEmbedder) -> Lookup:
        """After an exact miss, a semantic key's chat looks for the nearest entry of its
        scope; without an embedding worker it stays an exact miss."""
        if (found.state != "miss" or policy.mode != "semantic" or event.kind != "chat"
                or not event.messages or not embedder.available()):
            return found
        vector = await embedder.embed(event.messages[-1].content)
        if vector is None:
            return found
        scope = semantic_scope(event)
        found = replace(found, scope=scope, vector=vector)
        if "no-cache" in directives(cache_control):
            return found
        best, similarity = self.nearest(scope, vector)
        if best is None or similarity < policy.similarity:
            return found
        entry = self.get(best)
        if entry is None:
            return found
        return replace(found, state="hit", key=best, entry=entry, store=False,
                       similarity=similarity)

    def nearest(self, scope: str, vector: np.ndarray) -> tuple[str | None, float]:
        """The entry of `scope` whose embedding is nearest `vector`, and its similarity."""
        held = self._scopes.get(scope)
        if not held:
            return None, -1.0
        keys = list(held)
        similarities = np.stack([held[k] for k in keys]) @ vector
        i = int(np.argmax(similarities))
        return keys[i], float(similarities[i])

    def get(self, key: str, now: float | None = None) -> CacheStored | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= (now or time.time()):
            self._drop(key, "expired")
            return None
        self._entries.move_to_end(key)
        return entry

    def hit(self, event: InferenceRequested, found: Lookup, latency_ms: float) -> UsageRecorded:
        """Record a hit; returns its usage, to be billed at the model's cache-hit price."""
        entry = found.entry
        assert entry is not None and found.key is not None
        self._emit(CacheHit(
            request_id=event.request_id, cache_key=found.key, key_id=event.key_id,
            tenant=event.tenant, model=event.model, prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens, stored_request_id=entry.request_id,
            similarity=found.similarity, gateway_id=self.gateway_id), found.key)
        return UsageRecorded(
            request_id=event.request_id, model=event.model, key_id=event.key_id,
            tenant=event.tenant, user=event.user, variant=event.variant,
            experiment_id=event.experiment_id, worker_id=f"cache:{self.gateway_id}",
            status="completed", finish_reason=entry.choices[0].finish_reason,
            prompt_tokens=0, completion_tokens=0,
            cache_hit_tokens=entry.prompt_tokens + entry.completion_tokens,
            ttft_ms=latency_ms, latency_ms=latency_ms)

    def store(self, event: InferenceRequested, found: Lookup, t: Transcript) -> None:
        """Keep a fresh, complete answer, and tell the other replicas."""
        if not found.store or found.key is None or t.usage is None:
            return
        n = event.sampling.n
        if any(t.finish.get(i) not in ("stop", "length") for i in range(n)):
            return  # cut short (aborted, failed): not the answer the request would get
        choices = tuple(CachedChoice(text=t.text(i), finish_reason=t.finish[i])
                        for i in range(n))
        entry = CacheStored(
            request_id=event.request_id, cache_key=found.key, key_id=event.key_id,
            tenant=event.tenant, model=event.model,
            size_bytes=sum(len(c.text.encode()) for c in choices),
            expires_at=time.time() + found.ttl_s, choices=choices,
            prompt_tokens=t.usage.prompt_tokens, completion_tokens=t.usage.completion_tokens,
            embedding=None if found.vector is None else encode_vector(found.vector),
            scope=found.scope)
        self.put(entry)
        self._emit(entry, found.key)

    # -- the entries --------------------------------------------------------------------

    def put(self, entry: CacheStored) -> None:
        if entry.expires_at <= time.time():
            return
        if entry.cache_key in self._entries:
            self._forget(entry.cache_key)
        self._entries[entry.cache_key] = entry
        self.bytes += _footprint(entry)
        if entry.scope and entry.embedding:
            self._scopes.setdefault(entry.scope, {})[entry.cache_key] = decode_vector(
                entry.embedding)
        while self.bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)), "capacity")

    def _forget(self, key: str) -> CacheStored:
        entry = self._entries.pop(key)
        self.bytes -= _footprint(entry)
        if entry.scope and (held := self._scopes.get(entry.scope)) is not None:
            held.pop(key, None)
            if not held:
                del self._scopes[entry.scope]
        return entry

    def _drop(self, key: str, reason: Literal["expired", "capacity"]) -> None:
        entry = self._forget(key)
        if self.caught_up.is_set():  # replaying the topic at start evicts quietly
            self._emit(CacheEvicted(cache_key=key, key_id=entry.key_id, tenant=entry.tenant,
                                    model=entry.model, reason=reason,
                                    gateway_id=self.gateway_id), key)

    def _emit(self, event: Event, key: str) -> None:
        if self._publish is not None:
            self._publish(event, key)

    def apply(self, event: object) -> None:
        if isinstance(event, CacheStored):
            if (held := self._entries.get(event.cache_key)) is None or \
                    held.event_id != event.event_id:
                self.put(event)
        elif isinstance(event, CacheHit) and event.cache_key in self._entries:
            self._entries.move_to_end(event.cache_key)  # recently used on some replica


def _footprint(entry: CacheStored) -> int:
    """Bytes an entry holds, roughly: its texts, its embedding and a fixed overhead."""
    return entry.size_bytes + len(entry.embedding or "") + 512


def replay(entry: CacheStored, failover_after_s: float) -> Transcript:
    """A transcript holding a stored answer, for a renderer to show."""
    t = Transcript(failover_after_s)
    for i, choice in enumerate(entry.choices):
        t.texts[i].append(choice.text)
        t.lengths[i] = len(choice.text)
        if choice.finish_reason:
            t.finish[i] = choice.finish_reason
    t.usage = TokenUsage(prompt_tokens=entry.prompt_tokens,
                         completion_tokens=entry.completion_tokens)
    return t
