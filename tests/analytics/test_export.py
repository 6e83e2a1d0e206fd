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
from schemas import topics
from tests.analytics.conftest import Tenants
from tests.analytics.harness import caller
from tests.analytics.traffic import COMPLETION_MICROS, HIT_MICROS, PROMPT_MICROS


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
                             "unpriced_entries", "cache_hits", "cache_misses",
                             "saved_prompt_tokens", "saved_completion_tokens",
                             "hit_cost_micros", "cache_savings_micros", "cost_usd",
                             "price_versions"]
    *data, total = rows
    e = two_tenants.ours.expected
    assert {row["key_id"]: int(row["cost_micros"]) for row in data} == e.by_key
    assert total["key_id"] == "total"
    assert int(total["requests"]) == e.requests
    assert int(total["cost_micros"]) == e.cost_micros
    assert total["price_versions"] == "model-x:1 model-y:1"
    assert int(total["cache_hits"]) == sum(int(row["cache_hits"]) for row in data) == e.cache_hits
    assert int(total["cache_savings_micros"]) == e.savings_micros


def test_cache_hits_and_net_savings_per_key_and_model(api: TestClient,
                                                     two_tenants: Tenants) -> None:
    """A hit saves its tokens at the model's price (2 and 5 micro-dollars a prompt and a
    completion token) less what it was billed at the cache-hit price (1 a token)."""
    t = two_tenants.ours
    hits = [ev for topic, ev in t.events if topic == topics.CACHE]
    want: dict[tuple[str, str], list[int]] = {}
    for hit in hits:
        row = want.setdefault((hit.key_id, hit.model), [0, 0, 0, 0])  # type: ignore[union-attr]
        tokens = hit.prompt_tokens + hit.completion_tokens  # type: ignore[union-attr]
        row[0] += 1
        row[1] += tokens
        row[2] += tokens * HIT_MICROS
        row[3] += (hit.prompt_tokens * PROMPT_MICROS  # type: ignore[union-attr]
                   + hit.completion_tokens * COMPLETION_MICROS  # type: ignore[union-attr]
                   - tokens * HIT_MICROS)
    body = _export(api, two_tenants, format="json", group_by="key,model").json()
    got = {(r["key_id"], r["model"]): [r["cache_hits"],
                                       r["saved_prompt_tokens"] + r["saved_completion_tokens"],
                                       r["hit_cost_micros"], r["cache_savings_micros"]]
           for r in body["data"] if r["cache_hits"]}
    assert got == want
    assert len(want) == 2  # key-a only ever asks model-x, key-b model-y
    assert body["totals"]["cache_hits"] + body["totals"]["cache_misses"] == t.expected.cache_lookups

    summary = api.get("/v1/analytics", headers=caller(t.tenant), params={
        "from": two_tenants.start.isoformat(), "to": two_tenants.end.isoformat()}).json()
    e = t.expected
    assert summary["cache"] == {
        "hits": e.cache_hits, "lookups": e.cache_lookups,
        "hit_rate": round(e.cache_hits / e.cache_lookups, 6), "tokens_saved": e.saved_tokens,
        "hit_cost_micros": e.hit_cost_micros, "savings_micros": e.savings_micros,
        "savings_complete": True}
    by_model = {m["model"]: m["cache"]["savings_micros"] for m in summary["top_models"]}
    assert by_model == {m: sum(v[3] for (_, model), v in want.items() if model == m)
                        for m in ("model-x", "model-y")}


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
