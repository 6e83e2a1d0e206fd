"""A/B tests: two names on one engine, deterministic assignment, variants on events, readout."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterator

import httpx
import pytest

from schemas import topics
from schemas.events import RequestCompleted, UsageRecorded
from tests.conftest import Gateway, Proc, admin, create_key, wait_until
from tests.events import read_events

A, B = "smollm2-precise", "smollm2-creative"


@pytest.fixture
def experiment(gateway: Gateway, worker: Proc) -> Iterator[dict[str, object]]:
    def served() -> set[str]:
        with admin(gateway) as http:
            return {m["id"] for m in http.get("/v1/models").json()["data"]}

    wait_until(lambda: {A, B} <= served(), 30, "the aliases to be served")
    with admin(gateway) as http:
        r = http.post("/v1/admin/ab-tests", json={"name": "precise-vs-creative",
                                                  "model_a": A, "model_b": B, "split": 50})
        assert r.status_code == 201, r.text
        yield r.json()
        http.post(f"/v1/admin/ab-tests/{r.json()['experiment_id']}/stop")


def _ask(gateway: Gateway, secret: str, user: str | None) -> httpx.Response:
    body: dict[str, object] = {"model": A, "max_tokens": 6,
                               "messages": [{"role": "user", "content": "Name a colour."}]}
    if user is not None:
        body["user"] = user
    r = httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=120,
                   headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text
    return r


def test_assignment_routing_events_and_readout(
    bootstrap: str, gateway: Gateway, experiment: dict[str, object]
) -> None:
    eid = str(experiment["experiment_id"])
    key = create_key(gateway, f"ab-{uuid.uuid4().hex[:6]}", tier="enterprise")
    secret = str(key["secret"])
    served: dict[str, str] = {}
    request_ids: dict[str, str] = {}
    for i in range(24):
        user = f"user-{i}"
        r = _ask(gateway, secret, user)
        served[user] = r.json()["model"]
        request_ids[r.headers["x-request-id"]] = user
    assert set(served.values()) == {A, B}, "both variants get callers"
    # The same caller always gets the same variant.
    for user in list(served)[:6]:
        assert _ask(gateway, secret, user).json()["model"] == served[user]
    # Without `user`, the key is the caller.
    by_key = {_ask(gateway, secret, None).json()["model"] for _ in range(3)}
    assert len(by_key) == 1

    def variant(model: str) -> str:
        return "b" if model == B else "a"

    outcomes = [e for e in read_events(bootstrap, topics.REQUESTS, lambda ev: sum(
        isinstance(e, RequestCompleted) and e.experiment_id == eid for e in ev) >= 33, 30)
        if isinstance(e, RequestCompleted) and e.request_id in request_ids]
    assert len(outcomes) == 24
    for e in outcomes:
        assert e.experiment_id == eid and e.variant == variant(served[request_ids[e.request_id]])
        assert e.model == served[request_ids[e.request_id]]
    usage = [e for e in read_events(bootstrap, topics.USAGE, lambda ev: sum(
        isinstance(e, UsageRecorded) and e.request_id in request_ids for e in ev) >= 24, 30)
        if isinstance(e, UsageRecorded) and e.request_id in request_ids]
    assert {e.request_id: e.variant for e in usage} == {
        rid: variant(served[user]) for rid, user in request_ids.items()}

    counts = collections.Counter(variant(m) for m in served.values())
    expected_requests = {v: counts[v] for v in ("a", "b")}
    for user in list(served)[:6]:
        expected_requests[variant(served[user])] += 1
    expected_requests[variant(next(iter(by_key)))] += 3

    def readout() -> dict[str, object]:
        r = httpx.get(f"{gateway.base_url}/ab-tests/{eid}", timeout=10,
                      headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    wait_until(lambda: {v: readout()["variants"][v]["requests"]  # type: ignore[index]
                        for v in ("a", "b")} == expected_requests, 10, "the readout to count")
    body = readout()
    assert body["model_a"] == A and body["model_b"] == B and body["split"] == 50
    for v in ("a", "b"):
        stats = body["variants"][v]  # type: ignore[index]
        assert stats["model"] == (A if v == "a" else B)
        assert stats["errors"] == 0 and stats["error_rate"] == 0
        assert stats["completion_tokens"] > 0 and stats["prompt_tokens"] > 0
        for metric in ("latency_ms", "ttft_ms"):
            p = stats[metric]
            assert 0 < p["p50"] <= p["p95"] <= p["p99"], (metric, p)
    tests = body["tests"]  # type: ignore[index]
    assert set(tests) == {"error_rate", "latency"}
    assert tests["error_rate"]["significant"] is False  # no errors on either side
    assert body["leader"] in ("a", "b", None) and body["reason"]


def test_names_share_one_engine_with_their_own_defaults(
    gateway: Gateway, worker: Proc, api_key: str
) -> None:
    """`smollm2-precise` samples at temperature 0 unless told otherwise: always the same."""
    auth = {"Authorization": f"Bearer {api_key}"}
    models = httpx.get(f"{gateway.base_url}/models", headers=auth).json()["data"]
    assert {A, B} <= {m["id"] for m in models}
    body = {"model": A, "max_tokens": 12,
            "messages": [{"role": "user", "content": "Write a word."}]}
    texts = {httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=auth,
                        timeout=120).json()["choices"][0]["message"]["content"]
             for _ in range(3)}
    assert len(texts) == 1
