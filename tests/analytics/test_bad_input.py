"""Every bad request is a clear 400 with an OpenAI error body, and nothing else."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from analytics.warehouse import Warehouse
from tests.analytics.conftest import Tenants
from tests.analytics.harness import caller

TENANT_PATHS = ["/v1/usage/export", "/v1/analytics"]


def assert_400(response: object, param: str | None = None, code: str | None = None) -> None:
    r = response
    assert r.status_code == 400, r.text  # type: ignore[attr-defined]
    assert r.headers["content-type"] == "application/json"  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(("params", "param"), [
    ({"format": "xml"}, "format"),
    ({"format": ["csv", "json"]}, "format"),
    ({"group_by": "week"}, "group_by"),
    ({"group_by": "day,hour"}, "group_by"),
    ({"group_by": ""}, "group_by"),
])
def test_unknown_format_or_group_by(api: TestClient, params: dict[str, str], param: str
                                    ) -> None:
    assert_400(api.get("/v1/usage/export", params=params, headers=caller("t")), param)


@pytest.mark.parametrize("path", TENANT_PATHS)
@pytest.mark.parametrize(("params", "param", "code"), [
    ({"from": "2026-03-02", "to": "2026-03-01"}, "from", "invalid_period"),
    ({"from": "2026-03-01T12:00:00Z", "to": "2026-03-01T11:59:00Z"}, "from", "invalid_period"),
    ({"from": "2024-01-01", "to": "2026-03-01"}, "from", "period_too_long"),
    ({"from": "yesterday"}, "from", None),
    ({"to": "2026-13-45"}, "to", None),
    ({"from": "nan"}, "from", None),
    ({"from": "1e30"}, "from", None),
])
def test_bad_periods(api: TestClient, path: str, params: dict[str, str], param: str,
                     code: str | None) -> None:
    assert_400(api.get(path, params=params, headers=caller("t")), param, code)


def test_the_maximum_range_is_the_configured_one(api: TestClient) -> None:
    # The tests configure 400 days.
    ok = api.get("/v1/analytics", params={"from": "2025-01-01", "to": "2026-02-05"},
                 headers=caller("t"))
    assert ok.status_code == 200
    too_long = api.get("/v1/analytics", params={"from": "2025-01-01", "to": "2026-02-06"},
                       headers=caller("t"))
    assert_400(too_long, "from", "period_too_long")


@pytest.mark.parametrize("query", [
    "INSERT INTO usage (event_id) VALUES ('x')",
    "DROP TABLE usage",
    "TRUNCATE TABLE ledger",
    "ALTER TABLE usage DELETE WHERE 1",
    "CREATE TABLE x (a Int8) ENGINE = Memory",
    "SET readonly = 0",
    "SYSTEM DROP MARK CACHE",
    "OPTIMIZE TABLE usage FINAL",
    "SELECT 1; DROP TABLE usage",
    "SELECT * FROM usage INTO OUTFILE '/tmp/sluice-leak.csv'",
    "SELECT * FROM usage FORMAT JSON",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
    "KILL QUERY WHERE 1",
    "GRANT ALL ON *.* TO default",
    "",
    "   ",
])
def test_sql_that_is_not_a_plain_select(api: TestClient, query: str) -> None:
    assert_400(api.post("/v1/admin/sql", json={"query": query}, headers=caller(admin=True)),
               "query")


@pytest.mark.parametrize(("query", "code"), [
    ("SELECT number FROM numbers(5000)", "too_many_rows"),          # limit: 1000 rows
    ("SELECT count() FROM numbers(100000000000)", "query_timeout"),  # limit: 1 s
    ("SELECT 1 SETTINGS max_result_rows = 100000", "read_only"),
])
def test_sql_over_the_limits(api: TestClient, query: str, code: str) -> None:
    r = api.post("/v1/admin/sql", json={"query": query}, headers=caller(admin=True))
    assert_400(r, "query", code)


def test_sql_longer_than_the_limit(api: TestClient) -> None:
    query = "SELECT 1 " + " " * 70_000
    assert_400(api.post("/v1/admin/sql", json={"query": query}, headers=caller(admin=True)))


@pytest.mark.parametrize(("body", "param"), [
    (b"not json", None),
    (b'{"query": 7}', "query"),
    (b'["SELECT 1"]', "query"),
    (b'{"query": "SELECT 1", "format": "xml"}', "format"),
])
def test_sql_bodies_that_are_not_a_query(api: TestClient, body: bytes, param: str | None
                                         ) -> None:
    r = api.post("/v1/admin/sql", content=body, headers=caller(admin=True))
    assert_400(r, param)


async def test_refused_sql_changed_nothing(api: TestClient, two_tenants: Tenants,
                                           warehouse: Warehouse) -> None:
    tables = {r[0] for r in (await warehouse.query("SHOW TABLES")).rows}
    assert {"usage", "requests", "ledger", "cache", "rollup_minute"} <= tables
    (count,), = (await warehouse.query(
        "SELECT count() FROM usage WHERE tenant = {t:String}",
        {"t": two_tenants.ours.tenant})).rows
    assert count == two_tenants.ours.expected.usage
