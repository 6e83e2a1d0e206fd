"""The reporting API through the gateway: exactly the paths the analytics process serves,
one base URL and one key, the caller's identity set by the gateway alone, answers streamed
through, and a 503 (never an outage of inference) when the analytics process is away."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from starlette.routing import BaseRoute, Route

from analytics.api import create_app
from analytics.settings import Settings
from gateway import reporting
from schemas import reporting as reporting_contract
from schemas.reporting import FORWARDED, admin_only
from tests.analytics.conftest import Seeded, Stack
from tests.analytics.harness import INTERNAL_TOKEN
from tests.conftest import ADMIN_KEY, ROOT, Gateway, free_port, start_gateway

ALL_PATHS = [(f.method, f.path) for f in FORWARDED]
ADMIN_PATHS = [(f.method, f.path) for f in FORWARDED if admin_only(f.path)]


def test_the_gateway_forwards_exactly_the_paths_analytics_serves() -> None:
    def forwarded(routes: Sequence[BaseRoute]) -> set[tuple[str, frozenset[str]]]:
        return {(r.path, frozenset(r.methods or ())) for r in routes
                if isinstance(r, Route)
                and r.path not in ("/health", "/ready", reporting_contract.BILLED_PATH)}

    assert forwarded(reporting.routes) == forwarded(create_app(Settings()).routes)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _since() -> dict[str, str]:
    return {"from": str(int(time.time()) - 4 * 3600)}


def _openai_error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(("method", "path"), ALL_PATHS)
@pytest.mark.parametrize("key", [None, "sk-sluice-nobody-nothing"])
def test_no_key_or_an_unknown_key_is_401(gateway_stack: Stack, method: str, path: str,
                                         key: str | None) -> None:
    r = httpx.request(method, gateway_stack.gateway.url + path, timeout=10,
                      headers=bearer(key) if key else {}, json={"query": "SELECT 1"})
    _openai_error(r, 401)


@pytest.mark.parametrize(("method", "path"), ADMIN_PATHS)
def test_a_tenant_key_is_403_on_admin_paths(gateway_stack: Stack, seeded: Seeded,
                                            method: str, path: str) -> None:
    r = httpx.request(method, gateway_stack.gateway.url + path, timeout=10,
                      headers=bearer(seeded.secret), json={"query": "SELECT 1"})
    assert _openai_error(r, 403)["code"] == "forbidden"


FORGED = [{"x-sluice-admin": "1"}, {"x-sluice-tenant": "{theirs}"},
          {"x-sluice-tenant": "{theirs}", "x-sluice-internal-token": INTERNAL_TOKEN},
          {"X-Sluice-Admin": "1", "X-Sluice-Key-Id": "key-g1"}]


@pytest.mark.parametrize("forged", FORGED)
def test_identity_headers_a_client_sends_are_ignored(gateway_stack: Stack, seeded: Seeded,
                                                     forged: dict[str, str]) -> None:
    headers = {**bearer(seeded.secret),
               **{k: v.format(theirs=seeded.theirs.tenant) for k, v in forged.items()}}
    gw = gateway_stack.gateway.url
    r = httpx.get(gw + "/v1/analytics", params=_since(), headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["tenant"] == seeded.ours.tenant
    assert r.json()["requests"] == seeded.ours.expected.requests
    assert seeded.theirs.tenant not in r.text
    r = httpx.get(gw + "/v1/admin/analytics", headers=headers, timeout=10)
    assert r.status_code == 403


def test_the_export_streams_through_as_csv(gateway_stack: Stack, seeded: Seeded) -> None:
    with httpx.stream("GET", gateway_stack.gateway.url + "/v1/usage/export",
                      params={**_since(), "format": "csv", "group_by": "day,model"},
                      headers=bearer(seeded.secret), timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        assert "attachment" in r.headers["content-disposition"]
        assert r.headers["x-sluice-period-from"]
        assert r.headers["x-request-id"]
        text = r.read().decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[-1]["day"] == "total"
    assert int(rows[-1]["requests"]) == seeded.ours.expected.requests
    assert seeded.theirs.tenant not in text


def test_the_admin_export_and_sql_answer_for_any_tenant(gateway_stack: Stack,
                                                        seeded: Seeded) -> None:
    gw = gateway_stack.gateway.url
    r = httpx.get(gw + "/v1/admin/usage/export", timeout=30, headers=bearer(ADMIN_KEY),
                  params={**_since(), "tenant": seeded.theirs.tenant})
    assert r.status_code == 200, r.text
    assert r.json()["totals"]["requests"] == seeded.theirs.expected.requests
    r = httpx.post(gw + "/v1/admin/sql", headers=bearer(ADMIN_KEY), timeout=30, json={
        "query": f"SELECT count() FROM requests WHERE tenant = '{seeded.ours.tenant}'"})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [[seeded.ours.expected.requests]]
    r = httpx.post(gw + "/v1/admin/sql", headers=bearer(ADMIN_KEY), timeout=30,
                   json={"query": "DROP TABLE requests"})
    assert _openai_error(r, 400)["type"] == "invalid_request_error"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_sluice_report_usage_saves_a_tenants_export(gateway_stack: Stack, seeded: Seeded,
                                                    tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"usage.{fmt}"
    env = {**os.environ, "SLUICE_URL": gateway_stack.gateway.url, "SLUICE_ADMIN_KEY": ADMIN_KEY}
    r = subprocess.run(
        [sys.executable, "-m", "deploy", "report", "usage", "--tenant", seeded.ours.tenant,
         "--from", _since()["from"], "--to", str(int(time.time()) + 60), "--format", fmt,
         "--group-by", "day,key", "-o", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"bytes to {out}" in r.stderr
    if fmt == "json":
        body = json.loads(out.read_text())
        assert body["tenant"] == seeded.ours.tenant
        assert body["totals"]["requests"] == seeded.ours.expected.requests
    else:
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert rows[-1]["day"] == "total"
        assert int(rows[-1]["requests"]) == seeded.ours.expected.requests
        assert {r["key_id"] for r in rows[:-1]} >= {seeded.key_id}
    r = subprocess.run([sys.executable, "-m", "deploy", "report", "usage", "--format", fmt,
                        "--from", "2026-02-01", "--to", "2026-01-01"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "`from` is after `to`" in r.stderr


def test_a_time_series_per_minute_hour_or_day(gateway_stack: Stack, seeded: Seeded) -> None:
    gw = gateway_stack.gateway.url
    end = int(time.time()) // 60 * 60 + 60
    start = end - 4 * 3600
    for bucket, step in (("minute", 60), ("hour", 3600), ("day", 86400)):
        r = httpx.get(gw + "/v1/analytics", headers=bearer(seeded.secret), timeout=30,
                      params={"from": start, "to": end, "bucket": bucket})
        assert r.status_code == 200, r.text
        series = r.json()["series"]
        assert series["bucket"] == bucket and series["step_s"] == step
        ts = [p["t"] for p in series["points"]]
        # Every step from the one `from` falls in, present (empty ones too).
        assert ts == list(range(start // step * step, end, step))
        assert sum(p["requests"] for p in series["points"]) == seeded.ours.expected.requests
        assert sum(p["cost_micros"] for p in series["points"]) == r.json()["spend"]["total_micros"]
    r = httpx.get(gw + "/v1/analytics", headers=bearer(seeded.secret), timeout=30,
                  params={"from": end - 30 * 86400, "to": end, "bucket": "minute"})
    assert _openai_error(r, 400)["code"] == "too_many_buckets"
    r = httpx.get(gw + "/v1/analytics", headers=bearer(seeded.secret), timeout=30,
                  params={"bucket": "week"})
    assert _openai_error(r, 400)["param"] == "bucket"


@pytest.fixture(scope="module")
def orphan(stack_env: dict[str, str], gateway_stack: Stack) -> Iterator[Gateway]:
    """A gateway whose analytics process is not there."""
    gw = start_gateway("gateway-no-analytics", stack_env,
                       analytics_url=f"http://127.0.0.1:{free_port()}",
                       internal_token=INTERNAL_TOKEN)
    yield gw
    gw.proc.stop(30)


@pytest.mark.parametrize(("method", "path"), ALL_PATHS)
def test_reporting_is_503_when_analytics_is_away(orphan: Gateway, seeded: Seeded, method: str,
                                                 path: str) -> None:
    key = ADMIN_KEY if path.startswith("/v1/admin/") else seeded.secret
    r = httpx.request(method, orphan.url + path, headers=bearer(key), timeout=10,
                      json={"query": "SELECT 1"})
    error = _openai_error(r, 503)
    assert error["code"] == "analytics_unavailable"
    assert int(r.headers["retry-after"]) > 0


def test_the_rest_of_the_gateway_does_not_notice(orphan: Gateway) -> None:
    assert httpx.get(orphan.url + "/health", timeout=10).status_code == 200
    r = httpx.get(orphan.url + "/v1/models", headers=bearer(ADMIN_KEY), timeout=10)
    assert r.status_code == 200
    assert r.json()["object"] == "list"
    r = httpx.get(orphan.url + "/v1/admin/keys", headers=bearer(ADMIN_KEY), timeout=10)
    assert r.status_code == 200
