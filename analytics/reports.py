"""Reports over the rollups: the usage export, the summary, its time series and the tenant
list.

A report reads `rollup_hour` for the whole hours of its period and `rollup_minute` only
for the partial hours at either edge, so a year costs about what a day does, and no
report ever scans raw rows. (A per-minute series reads `rollup_minute` throughout; its
length is capped.) The SQL is built here from fixed fragments; callers' values
travel only as bound parameters, and the scope's tenant filter is inside the one
subquery (`_source`) that every report reads from.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from analytics.callers import Scope
from analytics.params import BUCKETS, Filters, Period
from analytics.warehouse import Result, Row, RowStream, Warehouse

# How each dimension is computed from a rollup row, and what it is called in the output.
_DIMENSIONS = {"day": ("toDate(bucket)", "day"), "model": ("model", "model"),
               "key": ("key_id", "key_id"), "tenant": ("tenant", "tenant")}

_SUMS = ("requests", "errors", "cache_hits", "cache_misses", "usage_records", "prompt_tokens",
         "completion_tokens", "cached_tokens", "ledger_entries", "unpriced_entries",
         "cost_micros", "saved_prompt_tokens", "saved_completion_tokens", "hit_cost_micros",
         "cache_savings_micros", "unpriced_saved_tokens")

EXPORT_MEASURES = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens",
                   "cost_micros", "unpriced_entries", "cache_hits", "cache_misses",
                   "saved_prompt_tokens", "saved_completion_tokens", "hit_cost_micros",
                   "cache_savings_micros")

# Each model's newest price per token, as its ledger entries show it, to price the tokens
# a cache hit saved. Joined to the rollup rows by model (a model without one: `priced` 0).
_PRICES = ("SELECT model, 1 AS priced, r.1 AS prompt_rate, r.2 AS completion_rate FROM ("
           "SELECT model, argMax((if(p > 0, i / p, 0), if(c > 0, o / c, 0)), price_version) "
           "AS r FROM (SELECT model, price_version, sum(fresh_prompt_tokens) AS p, "
           "sum(input_micros) AS i, sum(completion_tokens) AS c, sum(output_micros) AS o "
           "FROM model_prices GROUP BY model, price_version) GROUP BY model)")

# Measures that are not a plain sum of a rollup column. Savings are net: the saved tokens
# at the model's price, less what the hits were billed at its cache-hit price.
_COMPUTED = {  # qualified: the plain names are the sums' aliases
    "cache_savings_micros": "toInt64(round(sum(rollup.saved_prompt_tokens * prices.prompt_rate "
                            "+ rollup.saved_completion_tokens * prices.completion_rate))) "
                            "- sum(rollup.hit_cost_micros)",
    "unpriced_saved_tokens": "sumIf(rollup.saved_prompt_tokens + rollup.saved_completion_tokens, "
                             "prices.priced = 0)",
}


def _measures(names: Sequence[str]) -> str:
    return ", ".join(f"{_COMPUTED.get(n, f'sum({n})')} AS {n}" for n in names)


_QUANTILES = "quantilesTDigestMerge(0.5, 0.95, 0.99)"


def _hour_up(moment: datetime) -> datetime:
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(hours=1)


def _hour_down(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _source(scope: Scope, period: Period, filters: Filters, *, minutes: bool = False,
            by_key: bool = True) -> tuple[str, dict[str, Any]]:
    """The rollup rows of `period` that `scope` may read, as a subquery (from the minute
    rollup only, when `minutes`), each with its model's price (`_PRICES`). Without
    `by_key` (and no key filter) whole hours come from the per-tenant rollup, which has no
    key and far fewer rows."""
    hours = "rollup_hour" if by_key or filters.key_id is not None else "rollup_tenant_hour"
    params: dict[str, Any] = {}
    where = []
    if not scope.everything:
        where.append("tenant = {tenant:String}")
        params["tenant"] = scope.tenant
    if filters.key_id is not None:
        where.append("key_id = {key_id:String}")
        params["key_id"] = filters.key_id
    if filters.model is not None:
        where.append("model = {model:String}")
        params["model"] = filters.model

    def between(table: str, name: str, start: datetime, end: datetime) -> str:
        params[f"{name}_start"] = int(start.timestamp())
        params[f"{name}_end"] = int(end.timestamp())
        bounds = (f"bucket >= toDateTime({{{name}_start:UInt32}}, 'UTC') AND "
                  f"bucket < toDateTime({{{name}_end:UInt32}}, 'UTC')")
        return f"SELECT * FROM {table} WHERE {' AND '.join([*where, bounds])}"

    first_hour, last_hour = _hour_up(period.start), _hour_down(period.end)
    if minutes or first_hour >= last_hour:
        parts = [between("rollup_minute", "m", period.start, period.end)]
    else:
        parts = [between(hours, "h", first_hour, last_hour)]
        if period.start < first_hour:
            parts.append(between("rollup_minute", "head", period.start, first_hour))
        if last_hour < period.end:
            parts.append(between("rollup_minute", "tail", last_hour, period.end))
    return (f"({' UNION ALL '.join(parts)}) AS rollup LEFT JOIN ({_PRICES}) AS prices "
            "USING (model)"), params


# -- the usage export -----------------------------------------------------------------------


@dataclass(frozen=True)
class Export:
    scope: Scope
    period: Period
    filters: Filters
    dimensions: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return (*(_DIMENSIONS[d][1] for d in self.dimensions), *EXPORT_MEASURES,
                "price_versions")

    def sql(self) -> tuple[str, dict[str, Any]]:
        source, params = _source(self.scope, self.period, self.filters,
                                 by_key="key" in self.dimensions)
        dims = ", ".join(f"{_DIMENSIONS[d][0]} AS {_DIMENSIONS[d][1]}" for d in self.dimensions)
        names = ", ".join(_DIMENSIONS[d][1] for d in self.dimensions)
        measures = _measures(EXPORT_MEASURES)
        # Versions are qualified by model: a row that is not per model still says which
        # model's price each version is.
        versions = ("arraySort(groupUniqArrayArray(arrayMap(v -> concat(model, ':', "
                    "toString(v)), price_versions))) AS price_versions")
        sql = (f"SELECT {dims}, {measures}, {versions} FROM {source} "
               f"GROUP BY {names} ORDER BY {names}")
        return sql, params

    async def rows(self, warehouse: Warehouse) -> RowStream:
        """Open the export's row stream (its first block is read before this returns, so
        failures surface before any response has started)."""
        sql, params = self.sql()
        return await warehouse.stream(sql, params)

    async def price_versions(self, warehouse: Warehouse) -> list[dict[str, Any]]:
        source, params = _source(self.scope, self.period, self.filters, by_key=False)
        result = await warehouse.query(
            f"SELECT model, arraySort(groupUniqArrayArray(price_versions)), "
            f"sum(unpriced_entries) FROM {source} WHERE ledger_entries > 0 "
            "GROUP BY model ORDER BY model", params)
        return [{"model": m, "versions": list(v), "unpriced_entries": int(u)}
                for m, v, u in result.rows]


def export_record(columns: Sequence[str], row: Row) -> dict[str, Any]:
    """One export row as plain JSON-able values."""
    out: dict[str, Any] = {}
    for name, value in zip(columns, row, strict=True):
        if isinstance(value, date):
            value = value.isoformat()
        elif name == "price_versions":
            value = _versions(value)
        out[name] = value
    return out


def _versions(qualified: Sequence[str]) -> dict[str, list[int]]:
    versions: dict[str, list[int]] = {}
    for item in qualified:
        model, _, version = item.rpartition(":")
        versions.setdefault(model, []).append(int(version))
    return versions


# -- the summary ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    scope: Scope
    period: Period
    filters: Filters
    top: int = 5

    def sql(self) -> tuple[str, dict[str, Any]]:
        source, params = _source(self.scope, self.period, self.filters, by_key=False)
        sets = ["()", "(day)", "(model)"]
        if self.scope.everything:
            sets.append("(tenant)")
        # grouping(x) is 0 where x is one of the row's grouping columns (standard SQL).
        level = ("multiIf(grouping(day) = 0, 'day', grouping(model) = 0, 'model', "
                 + ("grouping(tenant) = 0, 'tenant', " if self.scope.everything else "")
                 + "'total')")
        sums = _measures(_SUMS)
        tenant = "tenant, " if self.scope.everything else ""
        sql = (f"SELECT {level} AS level, toDate(bucket) AS day, model, {tenant}{sums}, "
               f"{_QUANTILES}(latency_state) AS latency, {_QUANTILES}(ttft_state) AS ttft "
               f"FROM {source} GROUP BY GROUPING SETS ({', '.join(sets)})")
        return sql, params

    async def run(self, warehouse: Warehouse) -> dict[str, Any]:
        sql, params = self.sql()
        return self._shape(await warehouse.query(sql, params))

    def _shape(self, grouped: Result) -> dict[str, Any]:
        levels: dict[str, list[dict[str, Any]]] = {}
        for row in grouped.dicts():
            levels.setdefault(row["level"], []).append(row)
        total = (levels.get("total") or [_empty()])[0]
        models = levels.get("model", [])
        body: dict[str, Any] = {
            "object": "analytics.summary",
            "tenant": self.scope.tenant,
            "period": self.period.describe(),
            "requests": total["requests"],
            "errors": total["errors"],
            "error_rate": _ratio(total["errors"], total["requests"]),
            "tokens": _tokens(total),
            "spend": {
                "total_micros": total["cost_micros"],
                "unpriced_entries": total["unpriced_entries"],
                "by_day": [{"day": d["day"].isoformat(), "cost_micros": d["cost_micros"],
                            "requests": d["requests"], "tokens": _tokens(d)["total"]}
                           for d in sorted(levels.get("day", []), key=lambda d: d["day"])],
            },
            "top_models": [_ranked(m, "model") for m in _top(models, self.top)],
            "cache": _cache(total),
            "latency_ms": _quantiles(total["latency"]),
            "ttft_ms": _quantiles(total["ttft"]),
        }
        if self.scope.everything:
            body["top_tenants"] = [_ranked(t, "tenant")
                                   for t in _top(levels.get("tenant", []), self.top)]
        return body


# -- the time series ------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """The summary's measures per minute, hour or day, every step present (empty ones 0)."""

    scope: Scope
    period: Period
    filters: Filters
    bucket: str

    @property
    def step(self) -> int:
        return BUCKETS[self.bucket]

    def sql(self) -> tuple[str, dict[str, Any]]:
        source, params = _source(self.scope, self.period, self.filters,
                                 minutes=self.bucket == "minute", by_key=False)
        sums = _measures(_SUMS)
        sql = (f"SELECT toUInt32(toStartOfInterval(bucket, INTERVAL {self.step} SECOND)) AS t, "
               f"{sums}, {_QUANTILES}(latency_state) AS latency, "
               f"{_QUANTILES}(ttft_state) AS ttft FROM {source} GROUP BY t ORDER BY t")
        return sql, params

    async def run(self, warehouse: Warehouse) -> dict[str, Any]:
        sql, params = self.sql()
        found = {row["t"]: row for row in (await warehouse.query(sql, params)).dicts()}
        first = int(self.period.start.timestamp()) // self.step * self.step
        end = self.period.end.timestamp()
        points = []
        for t in range(first, math.ceil(end), self.step):
            row = found.get(t) or _empty()
            lookups = row["cache_hits"] + row["cache_misses"]
            points.append({
                "t": t, "requests": row["requests"], "errors": row["errors"],
                "error_rate": _ratio(row["errors"], row["requests"]),
                "tokens": _tokens(row), "cost_micros": row["cost_micros"],
                "cache_hit_rate": _ratio(row["cache_hits"], lookups),
                "latency_ms": _quantiles(row["latency"]), "ttft_ms": _quantiles(row["ttft"]),
            })
        return {"bucket": self.bucket, "step_s": self.step, "points": points}


async def billed_per_day(warehouse: Warehouse, since: datetime) -> list[list[Any]]:
    """What the ledger billed each key per UTC day since `since`, once per entry: rows of
    [key_id, tenant, day, requests, prompt, completion, cached tokens, cost micros], as
    the streams app counts them (a restarted embedded stack rebuilds its totals so)."""
    result = await warehouse.query(
        "SELECT key_id, tenant, toString(toDate(occurred_at)) AS day, count(), "
        "sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(cost_micros) "
        "FROM ledger FINAL WHERE occurred_at >= toDateTime64({since:UInt32}, 3, 'UTC') "
        "GROUP BY key_id, tenant, day ORDER BY key_id, day",
        {"since": int(since.timestamp())})
    return [[k, t, d, *(int(v) for v in rest)] for k, t, d, *rest in result.rows]


async def tenants(warehouse: Warehouse, period: Period) -> list[dict[str, Any]]:
    """Every tenant's totals in `period`, biggest spender first (admin only)."""
    source, params = _source(Scope(None), period, Filters(), by_key=False)
    sums = _measures(_SUMS)
    result = await warehouse.query(
        f"SELECT tenant, {sums} FROM {source} GROUP BY tenant "
        "ORDER BY cost_micros DESC, requests DESC, tenant", params)
    return [_ranked(row, "tenant") for row in result.dicts()]


def _empty() -> dict[str, Any]:
    return {**dict.fromkeys(_SUMS, 0), "latency": [], "ttft": []}


def _top(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-r["cost_micros"], -_tokens(r)["total"],
                                       -r["requests"]))[:n]


def _ranked(row: dict[str, Any], name: str) -> dict[str, Any]:
    return {name: row[name], "requests": row["requests"], "errors": row["errors"],
            "tokens": _tokens(row), "cost_micros": row["cost_micros"], "cache": _cache(row)}


def _cache(row: dict[str, Any]) -> dict[str, Any]:
    """Hits of the response cache, and what they saved (net of what the hits were billed;
    `savings_complete` is false when a model with hits has no price yet)."""
    lookups = row["cache_hits"] + row["cache_misses"]
    return {"hits": row["cache_hits"], "lookups": lookups,
            "hit_rate": _ratio(row["cache_hits"], lookups),
            "tokens_saved": row["saved_prompt_tokens"] + row["saved_completion_tokens"],
            "hit_cost_micros": row["hit_cost_micros"],
            "savings_micros": row["cache_savings_micros"],
            "savings_complete": row["unpriced_saved_tokens"] == 0}


def _tokens(row: dict[str, Any]) -> dict[str, int]:
    prompt, completion = row["prompt_tokens"], row["completion_tokens"]
    return {"prompt": prompt, "completion": completion, "cached": row["cached_tokens"],
            "total": prompt + completion}


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _quantiles(values: Sequence[float]) -> dict[str, float | None]:
    names = ("p50", "p95", "p99")
    if len(values) != len(names):
        return dict.fromkeys(names)
    return {n: (None if math.isnan(v) else round(float(v), 3))
            for n, v in zip(names, values, strict=True)}


async def iterate(stream: RowStream) -> AsyncIterator[Row]:
    async for block in stream.blocks():
        for row in block:
            yield row
