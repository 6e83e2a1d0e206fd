"""The usage export: JSON and CSV, streamed, with the period, the totals and the price
versions, and the same numbers whatever way the period falls on the rollups."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

from starlette.testclient import TestClient

from analytics.warehouse import Warehouse
from tests.analytics.conftest import Tenants
from tests.analytics.harness import caller


def _export(api: TestClient, tenants: Tenants, **params: Any) -> Any:
    query = {"from": tenants.start.isoformat(), "to": tenants.end.isoformat(), **params}
    return api.get("/v1/usage/export", params=query, headers=caller(tenants.ours.tenant))


def test_json_by_day_and_model(api: TestClient, two_tenants: Tenants) -> None:
    r = _export(api, two_tenants, format="json", group_by="day,model")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    e = two_tenants.ours.expected
    assert body["object"] == "usage.export"
    assert body["tenant"] == two_tenants.ours.tenant
    assert body["group_by"] == ["day", "model"]
    start, end = two_tenants.start, two_tenants.end
    assert body["period"] == {"from": f"{start:%Y-%m-%dT%H:%M:%S}Z",
                              "to": f"{end:%Y-%m-%dT%H:%M:%S}Z"}
    days = sorted({row["day"] for row in body["data"]})
    assert days == [f"{start + timedelta(days=d):%Y-%m-%d}" for d in range(3)]
    totals = body["totals"]
    assert totals["rows"] == len(body["data"])
    assert (totals["requests"], totals["errors"], totals["prompt_tokens"],
            totals["completion_tokens"], totals["cost_micros"]) == (
        e.requests, e.errors, e.prompt_tokens, e.completion_tokens, e.cost_micros)
    assert totals["cost_usd"] == f"{e.cost_micros / 1e6:.6f}"
    for name in ("requests", "prompt_tokens", "cost_micros"):
        assert sum(row[name] for row in body["data"]) == totals[name]
    per_model: dict[str, int] = {}
    for row in body["data"]:
        per_model[row["model"]] = per_model.get(row["model"], 0) + row["requests"]
        assert row["price_versions"] == {row["model"]: [1]}
    assert per_model == e.by_model
    assert body["price_versions"] == [{"model": "model-x", "versions": [1]},
                                      {"model": "model-y", "versions": [1]}]


def test_csv_by_key_ends_with_a_total_row(api: TestClient, two_tenants: Tenants) -> None:
    r = _export(api, two_tenants, format="csv", group_by="key")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["x-sluice-period-from"] == f"{two_tenants.start:%Y-%m-%dT%H:%M:%S}Z"
    assert two_tenants.ours.tenant in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["key_id", "requests", "errors", "prompt_tokens",
                             "completion_tokens", "cached_tokens", "cost_micros",
                             "unpriced_entries", "cost_usd", "price_versions"]
    *data, total = rows
    e = two_tenants.ours.expected
    assert {row["key_id"]: int(row["cost_micros"]) for row in data} == e.by_key
    assert total["key_id"] == "total"
    assert int(total["requests"]) == e.requests
    assert int(total["cost_micros"]) == e.cost_micros
    assert total["price_versions"] == "model-x:1 model-y:1"


async def test_a_ragged_period_reads_the_same_as_the_raw_rows(
        api: TestClient, two_tenants: Tenants, warehouse: Warehouse) -> None:
    """Whole hours come from the hourly rollup and the edges from the minute one; together
    they must say exactly what the raw rows say."""
    start = two_tenants.start + timedelta(minutes=17)
    end = two_tenants.start + timedelta(hours=29, minutes=43)
    r = api.get("/v1/usage/export", headers=caller(two_tenants.ours.tenant),
                params={"from": start.isoformat(), "to": end.isoformat(), "group_by": "model"})
    totals = r.json()["totals"]
    bounds = {"t": two_tenants.ours.tenant, "a": int(start.timestamp()),
              "b": int(end.timestamp())}

    async def raw(select: str, table: str, column: str) -> tuple[Any, ...]:
        sql = (f"SELECT {select} FROM {table} WHERE tenant = {{t:String}} AND "
               f"{column} >= toDateTime64({{a:UInt32}}, 3, 'UTC') AND "
               f"{column} < toDateTime64({{b:UInt32}}, 3, 'UTC')")
        return tuple((await warehouse.query(sql, bounds)).rows[0])

    (requests,) = await raw("count()", "requests", "ts")
    cost, prompt = await raw("sum(cost_micros), sum(prompt_tokens)", "ledger", "occurred_at")
    assert 0 < requests < two_tenants.ours.expected.requests
    assert (totals["requests"], totals["cost_micros"], totals["prompt_tokens"]) == (
        requests, cost, prompt)


def test_the_export_is_streamed(api: TestClient, two_tenants: Tenants) -> None:
    query = {"from": two_tenants.start.isoformat(), "to": two_tenants.end.isoformat(),
             "group_by": "day,model,key"}
    with api.stream("GET", "/v1/usage/export", params=query,
                    headers=caller(two_tenants.ours.tenant)) as r:
        assert r.status_code == 200
        assert "content-length" not in r.headers
        chunks = list(r.iter_bytes())
    assert len(chunks) >= 3
    json.loads(b"".join(chunks))


async def test_rows_come_from_clickhouse_a_block_at_a_time(warehouse: Warehouse) -> None:
    stream = await warehouse.stream("SELECT number FROM numbers(300000)")
    try:
        sizes = [len(block) async for block in stream.blocks()]
    finally:
        stream.close()
    assert sum(sizes) == 300000
    assert len(sizes) > 1
