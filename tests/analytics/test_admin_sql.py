"""POST /v1/admin/sql answers read-only SQL over every table, as JSON or CSV."""

from __future__ import annotations

import csv
import io

from starlette.testclient import TestClient

from tests.analytics.conftest import Tenants
from tests.analytics.harness import caller


def test_select_as_json(api: TestClient, two_tenants: Tenants) -> None:
    tenant = two_tenants.ours.tenant
    r = api.post("/v1/admin/sql", headers=caller(admin=True), json={
        "query": f"SELECT model, count() AS n, sum(cost_micros) AS cost FROM ledger "
                 f"WHERE tenant = '{tenant}' GROUP BY model ORDER BY model"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["model", "n", "cost"]
    assert body["rows"] == 2
    assert sum(row[2] for row in body["data"]) == two_tenants.ours.expected.cost_micros


def test_with_union_and_subqueries_as_csv(api: TestClient, two_tenants: Tenants) -> None:
    tenant = two_tenants.ours.tenant
    query = (f"WITH mine AS (SELECT * FROM usage WHERE tenant = '{tenant}') "
             "SELECT * FROM (SELECT 'usage' AS source, count() AS n FROM mine UNION ALL "
             f"SELECT 'requests', count() FROM requests WHERE tenant = '{tenant}') "
             "ORDER BY source")
    r = api.post("/v1/admin/sql", headers=caller(admin=True),
                 json={"query": query, "format": "csv"})
    assert r.status_code == 200, r.text
    rows = list(csv.reader(io.StringIO(r.text)))
    e = two_tenants.ours.expected
    assert rows == [["source", "n"], ["requests", str(e.requests)], ["usage", str(e.usage)]]


def test_values_json_has_no_type_for(api: TestClient) -> None:
    r = api.post("/v1/admin/sql", headers=caller(admin=True), json={
        "query": "SELECT now64(3, 'UTC') AS t, toDecimal64(1.5, 2) AS d, nan AS f, "
                 "[1, 2] AS a, generateUUIDv4() AS u"})
    assert r.status_code == 200, r.text
    (row,) = r.json()["data"]
    assert row[0].startswith("20") and row[1] == "1.50" and row[2] is None and row[3] == [1, 2]
