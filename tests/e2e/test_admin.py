"""The admin API and CLI: tenants, keys, prices and A/B tests as events, and their bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from schemas import topics
from tests.conftest import (
    ADMIN_KEY,
    MODEL,
    ROOT,
    Gateway,
    Proc,
    admin,
    create_key,
    start_gateway,
    wait_until,
)
from tests.events import read_events


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    return error  # type: ignore[no-any-return]


def sluice(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLUICE_URL": gateway.url, "SLUICE_ADMIN_KEY": ADMIN_KEY}
    return subprocess.run([sys.executable, "-m", "deploy", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def cli_json(gateway: Gateway, *args: str) -> dict[str, object]:
    done = sluice(gateway, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_tenant_lifecycle(gateway: Gateway) -> None:
    tenant = _name("acme")
    with admin(gateway) as http:
        created = http.post("/v1/admin/tenants", json={
            "tenant": tenant, "name": "Acme", "default_tier": "basic",
            "budgets": {"daily_tokens": {"hard": 777}}})
        assert created.status_code == 201, created.text
        _error(http.post("/v1/admin/tenants", json={"tenant": tenant}), 409, "tenant")
        assert tenant in [t["tenant"] for t in http.get("/v1/admin/tenants").json()["data"]]
        key = http.post("/v1/admin/keys", json={"tenant": tenant}).json()
        assert key["tier"] == "basic", "a key takes its tenant's default tier"
        assert key["budgets"]["daily_tokens"]["hard"] == 777, "and its budgets"
        own = http.post("/v1/admin/keys", json={"tenant": tenant, "budgets": {}}).json()
        assert own["budgets"]["daily_tokens"]["hard"] is None
        updated = http.patch(f"/v1/admin/tenants/{tenant}", json={"default_tier": "pro"})
        assert updated.json()["default_tier"] == "pro" and updated.json()["keys"] == 2
        auth = {"Authorization": f"Bearer {key['secret']}"}
        assert httpx.get(f"{gateway.base_url}/models", headers=auth).status_code == 200
        assert http.delete(f"/v1/admin/tenants/{tenant}").json()["disabled"] is True
        _error(httpx.get(f"{gateway.base_url}/models", headers=auth), 401)
        _error(http.get("/v1/admin/tenants/nobody-here"), 404, "tenant")


def test_key_lifecycle_and_secrets(bootstrap: str, gateway: Gateway) -> None:
    tenant = _name("keys")
    key = create_key(gateway, tenant, tier="pro", name="ci",
                     limits={"requests_per_minute": 7},
                     budgets={"monthly_spend_micros": {"soft": 5_000_000, "hard": 9_000_000}})
    secret, key_id = str(key["secret"]), str(key["key_id"])
    assert secret.startswith("sk-sluice-")
    assert key["limits"]["requests_per_minute"] == 7  # type: ignore[index]
    assert key["limits"]["concurrent"] == 20, "unset limits take the tier's"  # type: ignore[index]
    with admin(gateway) as http:
        shown = http.get(f"/v1/admin/keys/{key_id}").json()
        assert shown["secret"] is None, "the secret is shown once, at creation"
        listed = http.get("/v1/admin/keys", params={"tenant": tenant}).json()["data"]
        assert [k["key_id"] for k in listed] == [key_id]
        patched = http.patch(f"/v1/admin/keys/{key_id}", json={
            "tier": "basic", "limits": {"concurrent": 2},
            "budgets": {"daily_tokens": {"hard": 1000}}}).json()
        assert patched["tier"] == "basic" and patched["limits"]["concurrent"] == 2
        assert patched["limits"]["requests_per_minute"] == 60
        assert patched["budgets"]["daily_tokens"]["hard"] == 1000
        assert patched["version"] == 2
        status = httpx.get(f"{gateway.base_url}/rate-limit", timeout=10,
                           headers={"Authorization": f"Bearer {secret}"})
        assert status.status_code == 200, status.text
        assert status.json()["concurrent"]["limit"] == 2

        # Non-admin keys may not use admin routes.
        as_tenant = {"Authorization": f"Bearer {secret}"}
        _error(httpx.get(f"{gateway.base_url}/admin/keys", headers=as_tenant), 403)
        _error(httpx.post(f"{gateway.base_url}/admin/keys", headers=as_tenant,
                          json={"tenant": tenant}), 403)
        _error(httpx.get(f"{gateway.base_url}/admin/keys"), 401)

        assert http.delete(f"/v1/admin/keys/{key_id}").json()["revoked"] is True
        _error(httpx.get(f"{gateway.base_url}/models", headers=as_tenant), 401)
        _error(http.get("/v1/admin/keys/0000000000000000"), 404, "key_id")

    # The topic holds every version of the key, and never the secret itself.
    records = read_events(bootstrap, topics.KEYS, lambda ev: sum(
        getattr(e, "key_id", None) == key_id for e in ev) >= 3)
    versions = [e for e in records if getattr(e, "key_id", None) == key_id]
    assert [e.version for e in versions] == [1, 2, 3]  # type: ignore[attr-defined]
    assert all(secret not in e.model_dump_json() for e in records)
    assert all(e.secret_hash != secret for e in versions)  # type: ignore[attr-defined]


def test_a_new_gateway_rebuilds_its_view_from_the_topic(
    stack_env: dict[str, str], gateway: Gateway
) -> None:
    tenant = _name("rebuild")
    kept, revoked = create_key(gateway, tenant), create_key(gateway, tenant)
    with admin(gateway) as http:
        http.delete(f"/v1/admin/keys/{revoked['key_id']}")
    fresh = start_gateway("gateway-fresh", stack_env, gateway_id="gateway-fresh")
    try:
        def status(secret: object) -> int:
            return httpx.get(f"{fresh.base_url}/models", timeout=5,
                             headers={"Authorization": f"Bearer {secret}"}).status_code

        wait_until(lambda: fresh.ready() is not None, 10, "the fresh gateway", fresh.proc)
        assert status(kept["secret"]) == 200, "serves only once its view is complete"
        assert status(revoked["secret"]) == 401
    finally:
        fresh.proc.stop(30)


def test_prices_are_versioned(gateway: Gateway, worker: Proc) -> None:
    with admin(gateway) as http:
        before = http.get("/v1/admin/prices").json()["data"]
        known = next((p["versions"] for p in before if p["model"] == MODEL), [])
        body = {"input_micros_per_million": 150_000, "output_micros_per_million": 600_000}
        first = http.put(f"/v1/admin/prices/{MODEL}", json=body)
        assert first.status_code == 200, first.text
        second = http.put(f"/v1/admin/prices/{MODEL}", json={
            **body, "cached_micros_per_million": 75_000}).json()
        versions = second["versions"]
        assert [v["version"] for v in versions] == list(range(1, len(known) + 3))
        assert versions[-2]["cached_micros_per_million"] == 150_000, "cached defaults to input"
        assert versions[-1]["cached_micros_per_million"] == 75_000
        assert versions[-1]["effective_from"] >= versions[-2]["effective_from"]


def test_cli(gateway: Gateway, worker: Proc) -> None:
    tenant = _name("cli")
    key = cli_json(gateway, "keys", "create", "--tenant", tenant, "--tier", "pro",
                   "--requests-per-minute", "42", "--budget", "daily_tokens.hard=5000")
    assert key["tier"] == "pro" and str(key["secret"]).startswith("sk-sluice-")
    assert key["limits"]["requests_per_minute"] == 42  # type: ignore[index]
    assert key["budgets"]["daily_tokens"]["hard"] == 5000  # type: ignore[index]
    listed = cli_json(gateway, "keys", "list", "--tenant", tenant)["data"]
    assert [k["key_id"] for k in listed] == [key["key_id"]]  # type: ignore[union-attr]
    assert cli_json(gateway, "keys", "revoke", str(key["key_id"]))["revoked"] is True
    tenants = cli_json(gateway, "tenants", "list")["data"]
    assert tenant in [t["tenant"] for t in tenants]  # type: ignore[union-attr]

    priced = cli_json(gateway, "prices", "set", MODEL, "--input", "0.15", "--output", "0.60")
    assert priced["versions"][-1]["input_micros_per_million"] == 150_000  # type: ignore[index]
    assert priced["versions"][-1]["output_micros_per_million"] == 600_000  # type: ignore[index]
    assert MODEL in [p["model"] for p in cli_json(gateway, "prices", "list")["data"]]  # type: ignore[union-attr]

    ab = cli_json(gateway, "ab", "create", "--name", "cli-test", "--a", "smollm2-precise",
                  "--b", "smollm2-creative", "--split", "30")
    try:
        assert ab["split"] == 30 and ab["status"] == "running"
        ids = [e["experiment_id"] for e in cli_json(gateway, "ab", "list")["data"]]  # type: ignore[union-attr]
        assert ab["experiment_id"] in ids
        shown = cli_json(gateway, "ab", "show", str(ab["experiment_id"]))
        assert shown["variants"]["b"]["model"] == "smollm2-creative"  # type: ignore[index]
    finally:
        stopped = cli_json(gateway, "ab", "stop", str(ab["experiment_id"]))
    assert stopped["status"] == "stopped"

    failed = sluice(gateway, "keys", "get", "0000000000000000")
    assert failed.returncode != 0 and "404" in failed.stderr


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), [
    ("POST", "/v1/admin/keys", b'{"tenant": ', 400, None),
    ("POST", "/v1/admin/keys", b'[1, 2]', 400, None),
    ("POST", "/v1/admin/keys", b'{"tier": "pro"}', 400, "tenant"),
    ("POST", "/v1/admin/keys", b'{"tenant": "t", "tier": "platinum"}', 400, "tier"),
    ("POST", "/v1/admin/keys", b'{"tenant": "t", "limits": {"burst": -1}}', 400,
     "limits.burst"),
    ("POST", "/v1/admin/keys", b'{"tenant": "t", "limits": {"burst": "lots"}}', 400,
     "limits.burst"),
    ("POST", "/v1/admin/keys", b'{"tenant": "t", "budgets": {"daily_tokens": {"hard": -5}}}',
     400, "budgets.daily_tokens.hard"),
    ("POST", "/v1/admin/keys", b'{"tenant": "bad tenant!"}', 400, "tenant"),
    ("POST", "/v1/admin/keys", b'{"tenant": "t", "colour": "red"}', 400, "colour"),
    ("POST", "/v1/admin/tenants", b'{"tenant": "t", "default_tier": "gold"}', 400,
     "default_tier"),
    ("PUT", f"/v1/admin/prices/{MODEL}", b'{"input_micros_per_million": -1, '
     b'"output_micros_per_million": 1}', 400, "input_micros_per_million"),
    ("PUT", f"/v1/admin/prices/{MODEL}", b'{"input_micros_per_million": 0.5, '
     b'"output_micros_per_million": 1}', 400, "input_micros_per_million"),
    ("PUT", "/v1/admin/prices/no-such-model", b'{"input_micros_per_million": 1, '
     b'"output_micros_per_million": 1}', 404, "model"),
    ("POST", "/v1/admin/ab-tests", b'{"name": "x", "model_a": "smollm2-precise", '
     b'"model_b": "smollm2-creative", "split": 150}', 400, "split"),
    ("POST", "/v1/admin/ab-tests", b'{"name": "x", "model_a": "smollm2-precise", '
     b'"model_b": "smollm2-creative", "split": -1}', 400, "split"),
    ("POST", "/v1/admin/ab-tests", b'{"name": "x", "model_a": "smollm2-precise", '
     b'"model_b": "nobody-serves-this", "split": 50}', 400, "model_b"),
    ("POST", "/v1/admin/ab-tests", b'{"name": "x", "model_a": "smollm2-precise", '
     b'"model_b": "smollm2-precise", "split": 50}', 400, "model_b"),
    ("PATCH", "/v1/admin/keys/0000000000000000", b'{"tier": "pro"}', 404, "key_id"),
])
def test_bad_admin_input(gateway: Gateway, worker: Proc, method: str, path: str, body: bytes,
                         status: int, param: str | None) -> None:
    with admin(gateway) as http:
        keys_before = http.get("/v1/admin/keys").json()["data"]
        prices_before = http.get("/v1/admin/prices").json()["data"]
        tests_before = http.get("/v1/admin/ab-tests").json()["data"]
        r = http.request(method, path, content=body,
                         headers={"content-type": "application/json"})
        _error(r, status, param)
        # Nothing changed, nothing was lost, and the gateway keeps serving.
        assert http.get("/v1/admin/keys").json()["data"] == keys_before
        assert http.get("/v1/admin/prices").json()["data"] == prices_before
        assert http.get("/v1/admin/ab-tests").json()["data"] == tests_before
