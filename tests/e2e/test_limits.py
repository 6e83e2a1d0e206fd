"""Admission by leases, exact across gateway replicas; quotas, budgets and status routes."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import time
import uuid

import httpx
import pytest

from schemas import topics
from schemas.events import BudgetAlert, RequestCompleted
from schemas.tiers import TIER_LIMITS
from tests.conftest import MODEL, Gateway, admin, create_key, start_gateway, wait_until
from tests.events import read_events

RATE_HEADERS = tuple(f"x-ratelimit-{what}-{unit}" for unit in ("requests", "tokens")
                     for what in ("limit", "remaining", "reset"))


def _tenant() -> str:
    return f"limits-{uuid.uuid4().hex[:8]}"


def _body(max_tokens: int = 1, stream: bool = False) -> dict[str, object]:
    return {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": "Say hi."}]}


async def _flood(gateways: list[Gateway], secret: str, n: int, body: dict[str, object]
                 ) -> list[httpx.Response]:
    """`n` requests at once, alternating between gateways."""
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(timeout=300, limits=limits,
                                 headers={"Authorization": f"Bearer {secret}"}) as http:
        async def one(i: int) -> httpx.Response:
            gw = gateways[i % len(gateways)]
            return await http.post(f"{gw.base_url}/chat/completions", json=body)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def _completed(bootstrap: str, key_id: str, count: int) -> list[RequestCompleted]:
    def mine(events: list[object]) -> list[RequestCompleted]:
        return [e for e in events if isinstance(e, RequestCompleted) and e.key_id == key_id]

    return mine(read_events(bootstrap, topics.REQUESTS, lambda ev: len(mine(ev)) >= count, 60))


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def test_exact_request_count_across_two_gateways(
    bootstrap: str, gateway: Gateway, gateway_b: Gateway
) -> None:
    """300 requests at once through two replicas for a key allowed 40: exactly 40 pass."""
    allowed = 40
    key = create_key(gateway, _tenant(), tier="enterprise",
                     limits={"burst": allowed, "requests_per_minute": 0, "concurrent": 1000})
    wait_until(lambda: httpx.get(f"{gateway_b.base_url}/models", timeout=5, headers={
        "Authorization": f"Bearer {key['secret']}"}).status_code == 200, 10,
        "gateway-b to learn the key")
    replies = asyncio.run(_flood([gateway, gateway_b], str(key["secret"]), 300, _body()))
    statuses = collections.Counter(r.status_code for r in replies)
    assert statuses == {200: allowed, 429: 300 - allowed}, statuses
    for r in replies:
        if r.status_code == 429:
            error = r.json()["error"]
            assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
            assert int(r.headers["retry-after"]) >= 1
        for name in RATE_HEADERS:
            assert name in r.headers, (r.status_code, name)
    by_gateway = collections.Counter(i % 2 for i, r in enumerate(replies) if r.status_code == 200)
    assert set(by_gateway) == {0, 1}, "both replicas admitted some"
    assert len(_completed(bootstrap, str(key["key_id"]), allowed)) == allowed


def test_concurrency_never_exceeds_the_limit_across_gateways(
    bootstrap: str, gateway: Gateway, gateway_b: Gateway
) -> None:
    limit = 3
    key = create_key(gateway, _tenant(), tier="enterprise", limits={"concurrent": limit})
    wait_until(lambda: httpx.get(f"{gateway_b.base_url}/models", timeout=5, headers={
        "Authorization": f"Bearer {key['secret']}"}).status_code == 200, 10,
        "gateway-b to learn the key")
    replies = asyncio.run(_flood([gateway, gateway_b], str(key["secret"]), 60, _body(24)))
    ok = [r for r in replies if r.status_code == 200]
    rejected = [r for r in replies if r.status_code == 429]
    assert ok and rejected and len(ok) + len(rejected) == len(replies)
    assert all("concurrent" in r.json()["error"]["message"] for r in rejected)
    events = _completed(bootstrap, str(key["key_id"]), len(ok))
    assert len(events) == len(ok)
    # Each request held its slot from admission until it ended (the event's time).
    assert all(e.admitted_at is not None for e in events)
    peak = _max_overlap([(e.admitted_at, e.ts) for e in events])  # type: ignore[misc]
    assert 1 <= peak <= limit, peak


def _lease_round_trips(gateway: Gateway, when: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    prefix = f'sluice_lease_round_trips_total{{when="{when}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines()
                 if line.startswith(prefix)), 0.0)


def test_a_busy_key_whose_requests_grow_keeps_a_lease_in_hand(
        gateway: Gateway, client: object) -> None:
    """A lease sized for small requests, then asked for large ones: it is topped up ahead
    for every request it still holds, not one request at a time (each of those waited for
    a round trip to the limiter of its own)."""
    key = create_key(gateway, _tenant(), tier="pro")
    with httpx.Client(base_url=gateway.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {key['secret']}"}) as http:
        for _ in range(4):  # busy enough that the lease grows past a few requests
            assert http.post("/chat/completions", json=_body(1)).status_code == 200
        ahead, waited = (_lease_round_trips(gateway, w) for w in ("ahead", "waited"))
        for _ in range(8):  # each reserves about eight times what a small one did
            assert http.post("/chat/completions", json=_body(200)).status_code == 200
    assert _lease_round_trips(gateway, "waited") - waited <= 1
    assert _lease_round_trips(gateway, "ahead") > ahead


def test_a_key_in_use_has_its_expiring_lease_renewed_before_its_next_request(
        gateway: Gateway, client: object) -> None:
    """A key sending a request a second holds a lease sized for a faster start, so it
    expires (10 s to live, or at the minute) with requests left. It is renewed at expiry,
    in the background: no later request waits for the limiter (without the renewal, the
    first request after each expiry did)."""
    key = create_key(gateway, _tenant(), tier="pro")
    with httpx.Client(base_url=gateway.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {key['secret']}"}) as http:
        def round_trips() -> dict[str, int]:
            r = http.get("/rate-limit")
            assert r.status_code == 200, r.text
            return r.json()["lease"]["round_trips"]  # type: ignore[no-any-return]

        for _ in range(4):  # a quick start: the lease grows to last its life at this rate
            assert http.post("/chat/completions", json=_body(1)).status_code == 200
        before = round_trips()
        end = time.monotonic() + 13
        while (start := time.monotonic()) < end:
            assert http.post("/chat/completions", json=_body(1)).status_code == 200
            time.sleep(max(0.0, 1.0 - (time.monotonic() - start)))
        after = round_trips()
    assert after["waited"] == before["waited"], (before, after)
    assert after["ahead"] > before["ahead"]


def test_headers_and_rate_limit_status(gateway: Gateway, client: object) -> None:
    key = create_key(gateway, _tenant(), tier="basic")
    auth = {"Authorization": f"Bearer {key['secret']}"}
    r = httpx.post(f"{gateway.base_url}/chat/completions", json=_body(4), headers=auth,
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-requests"] == "60"
    assert r.headers["x-ratelimit-limit-tokens"] == "100000"
    assert 0 <= int(r.headers["x-ratelimit-remaining-requests"]) < 100
    assert int(r.headers["x-ratelimit-remaining-tokens"]) < 100_000
    assert r.headers["x-ratelimit-reset-tokens"].endswith("s")

    status = httpx.get(f"{gateway.base_url}/rate-limit", headers=auth, timeout=10).json()
    assert status["key_id"] == key["key_id"] and status["limits"]["concurrent"] == 5
    assert status["requests"]["limit_per_minute"] == 60
    assert status["requests"]["remaining"] < 100
    assert 0 <= status["tokens"]["reset_s"] <= 60
    assert status["concurrent"]["limit"] == 5

    streamed = httpx.post(f"{gateway.base_url}/chat/completions", json=_body(4, stream=True),
                          headers=auth, timeout=120)
    assert streamed.status_code == 200 and "x-ratelimit-remaining-requests" in streamed.headers


def _usage(gateway: Gateway, secret: str, period: str = "day") -> dict[str, object]:
    r = httpx.get(f"{gateway.base_url}/usage", params={"period": period}, timeout=10,
                  headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_usage_totals_are_live(gateway: Gateway, client: object) -> None:
    tenant = _tenant()
    keys = [create_key(gateway, tenant, tier="pro") for _ in range(2)]
    sent = collections.defaultdict(int)
    for i, key in enumerate(keys):
        for _ in range(i + 1):
            r = httpx.post(f"{gateway.base_url}/chat/completions", json=_body(5), timeout=120,
                           headers={"Authorization": f"Bearer {key['secret']}"})
            assert r.status_code == 200, r.text
            sent[key["key_id"]] += r.json()["usage"]["total_tokens"]
    first, second = (str(k["secret"]) for k in keys)

    def tokens(body: dict[str, object], part: str) -> int:
        t = body[part]
        return int(t["prompt_tokens"]) + int(t["completion_tokens"])  # type: ignore[index]

    wait_until(lambda: tokens(_usage(gateway, second), "tenant_totals") == sum(sent.values()),
               10, "usage to be counted")
    for period in ("day", "month"):
        body = _usage(gateway, second, period)
        assert body["key"]["requests"] == 2  # type: ignore[index]
        assert tokens(body, "key") == sent[keys[1]["key_id"]]
        assert body["tenant_totals"]["requests"] == 3  # type: ignore[index]
    assert tokens(_usage(gateway, first), "key") == sent[keys[0]["key_id"]]

    bad = httpx.get(f"{gateway.base_url}/usage", params={"period": "year"}, timeout=10,
                    headers={"Authorization": f"Bearer {first}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "period"


def test_token_quota_blocks_with_insufficient_quota(
    bootstrap: str, gateway: Gateway, client: object
) -> None:
    key = create_key(gateway, _tenant(), tier="pro",
                     budgets={"daily_tokens": {"soft": 1, "hard": 20}})
    auth = {"Authorization": f"Bearer {key['secret']}"}
    first = httpx.post(f"{gateway.base_url}/chat/completions", json=_body(16), headers=auth,
                       timeout=120)
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["total_tokens"] >= 20

    def blocked() -> bool:
        r = httpx.post(f"{gateway.base_url}/chat/completions", json=_body(1), headers=auth,
                       timeout=120)
        if r.status_code != 429:
            return False
        error = r.json()["error"]
        assert error["code"] == "insufficient_quota", error
        assert int(r.headers["retry-after"]) >= 1
        return True

    wait_until(blocked, 10, "the quota to block the key")
    alerts = read_events(bootstrap, topics.ALERTS, lambda ev: any(
        isinstance(e, BudgetAlert) and e.key_id == key["key_id"] for e in ev), 20)
    mine = [e for e in alerts if isinstance(e, BudgetAlert) and e.key_id == key["key_id"]]
    assert mine and mine[0].budget == "daily_tokens" and mine[0].level == "soft"


def test_spend_budget_blocks(gateway: Gateway, client: object) -> None:
    with admin(gateway) as http:
        r = http.put(f"/v1/admin/prices/{MODEL}", json={
            "input_micros_per_million": 1_000_000, "output_micros_per_million": 2_000_000})
        assert r.status_code == 200, r.text
    # One request of ~30 tokens costs ~40 micro-dollars, over the hard budget of 10.
    key = create_key(gateway, _tenant(), tier="pro",
                     budgets={"daily_spend_micros": {"hard": 10}})
    auth = {"Authorization": f"Bearer {key['secret']}"}
    assert httpx.post(f"{gateway.base_url}/chat/completions", json=_body(8), headers=auth,
                      timeout=120).status_code == 200

    def blocked() -> bool:
        r = httpx.post(f"{gateway.base_url}/chat/completions", json=_body(1), headers=auth,
                       timeout=120)
        return r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"

    wait_until(blocked, 10, "the spend budget to block the key")
    assert int(_usage(gateway, str(key["secret"]))["key"]["cost_micros"]) > 10  # type: ignore[index]


def test_revoked_key_stops_on_every_gateway_within_a_second(
    gateway: Gateway, gateway_b: Gateway
) -> None:
    key = create_key(gateway, _tenant(), tier="free")
    auth = {"Authorization": f"Bearer {key['secret']}"}
    for gw in (gateway, gateway_b):
        wait_until(lambda gw=gw: httpx.get(f"{gw.base_url}/models", headers=auth,
                                           timeout=5).status_code == 200, 10, "the key to work")
    with admin(gateway) as http:
        assert http.delete(f"/v1/admin/keys/{key['key_id']}").json()["revoked"] is True
    revoked_at = time.monotonic()
    assert httpx.get(f"{gateway.base_url}/models", headers=auth, timeout=5).status_code == 401
    while httpx.get(f"{gateway_b.base_url}/models", headers=auth, timeout=5).status_code != 401:
        assert time.monotonic() - revoked_at < 1.0, "gateway-b still accepts the revoked key"
        time.sleep(0.01)


def test_unauthenticated_flood_is_limited_per_ip(
    stack_env: dict[str, str], gateway: Gateway, api_key: str
) -> None:
    gw = start_gateway("gateway-flood", stack_env, gateway_id="gateway-flood",
                       unauthenticated_per_minute="6", unauthenticated_burst="5",
                       trusted_proxies="127.0.0.1/32")
    try:
        def bad(ip: str | None = None) -> int:
            headers = {"Authorization": "Bearer sk-wrong"}
            if ip:
                headers["X-Forwarded-For"] = f"{ip}, 127.0.0.1"
            return httpx.get(f"{gw.base_url}/models", headers=headers, timeout=5).status_code

        assert [bad("203.0.113.7") for _ in range(5)] == [401] * 5
        r = httpx.get(f"{gw.base_url}/models", timeout=5,
                      headers={"Authorization": "Bearer sk-wrong",
                               "X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert "retry-after" in r.headers
        assert bad("198.51.100.9") == 401, "another client behind the proxy has its own budget"
        good = httpx.get(f"{gw.base_url}/models", timeout=5,
                         headers={"Authorization": f"Bearer {api_key}",
                                  "X-Forwarded-For": "203.0.113.7"})
        assert good.status_code == 200, "a valid key is never limited by the flood"
    finally:
        gw.proc.stop(30)


def test_forwarded_for_is_ignored_from_untrusted_peers(
    stack_env: dict[str, str], gateway: Gateway
) -> None:
    gw = start_gateway("gateway-untrusted", stack_env, gateway_id="gateway-untrusted",
                       unauthenticated_per_minute="6", unauthenticated_burst="3")
    try:
        codes = [httpx.get(f"{gw.base_url}/models", timeout=5, headers={
            "Authorization": "Bearer sk-wrong", "X-Forwarded-For": f"192.0.2.{i}"}).status_code
            for i in range(5)]
        assert codes == [401, 401, 401, 429, 429], "spoofed addresses share the peer's bucket"
    finally:
        gw.proc.stop(30)


# -- the same limits through one gateway or two -------------------------------------------


def _free_key(gateway: Gateway, gateways: list[Gateway], **body: object) -> dict[str, object]:
    key = create_key(gateway, _tenant(), **{"tier": "free", **body})
    for gw in gateways:
        wait_until(lambda gw=gw: httpx.get(f"{gw.base_url}/models", timeout=5, headers={
            "Authorization": f"Bearer {key['secret']}"}).status_code == 200, 10,
            "the gateway to learn the key")
    return key


def _outcomes(gateways: list[Gateway], secret: object, rounds: int, at_once: int
              ) -> tuple[list[str], float]:
    """`rounds` rounds of `at_once` requests together, each round through the next gateway
    and only after the last has ended; each request's outcome, and the seconds taken."""
    def outcome(r: httpx.Response) -> str:
        return "ok" if r.status_code == 200 else r.json()["error"]["message"]

    out = []
    start = time.monotonic()
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {secret}"}) as http, \
            concurrent.futures.ThreadPoolExecutor(at_once) as pool:
        for i in range(rounds):
            url = f"{gateways[i % len(gateways)].base_url}/chat/completions"
            together = [pool.submit(http.post, url, json=_body()) for _ in range(at_once)]
            out += [outcome(f.result()) for f in together]
    return out, time.monotonic() - start


@pytest.mark.parametrize("at_once", [1, 2], ids=["sequential", "pairs"])
@pytest.mark.parametrize("spread", [1, 2], ids=["one-gateway", "two-gateways"])
def test_a_free_key_gets_its_tier_however_many_gateways_serve_it(
        gateway: Gateway, gateway_b: Gateway, spread: int, at_once: int) -> None:
    """The free tier: a burst of 20, 10 more a minute, 2 at a time. Requests one at a time
    or in pairs never exceed 2 at once, so only the request rate refuses any, and as many
    pass through two gateways taken in turn as through one."""
    gateways = [gateway, gateway_b][:spread]
    key = _free_key(gateway, gateways)
    out, took = _outcomes(gateways, key["secret"], 40 // at_once, at_once)
    limits = TIER_LIMITS["free"]
    burst, refilled = limits.burst or 0, math.floor(took * (limits.requests_per_minute or 0) / 60)
    assert set(out) <= {"ok", "Request rate limit reached for this key."}, out
    assert burst <= out.count("ok") <= burst + refilled + 1, (out, took)
    if spread == 1:
        assert out[:burst] == ["ok"] * burst, out
    # Through two, the last of the burst may be in the other gateway's lease, to be used
    # by its next request: the count is the same, the order may differ.


def test_a_slot_given_back_is_free_at_the_other_gateway_at_once(
        gateway: Gateway, gateway_b: Gateway) -> None:
    """One request at a time allowed: each request, through the gateways in turn, finds the
    slot the last one gave back on its way out."""
    key = _free_key(gateway, [gateway_b], tier="enterprise", limits={"concurrent": 1})
    out, _ = _outcomes([gateway, gateway_b], key["secret"], 24, 1)
    assert out == ["ok"] * 24, out
