"""`POST /v1/admin/sql`: read-only SQL for the admin, within limits.

Three guards, outermost first:

1. The text must parse — by ClickHouse's own parser, through `EXPLAIN AST` — as one plain
   SELECT (`WITH`, `UNION` and subqueries included), with no `INTO OUTFILE` or `FORMAT`
   clause. Anything else is a 400 before it runs.
2. It runs on a session with `readonly=1`: ClickHouse itself refuses writes, DDL, table
   functions that reach outside (file, url, s3, remote…) and any settings change.
3. That session carries `max_execution_time`, `max_result_rows` (overflow throws) and
   `max_query_size`; going over any of them is a 400 too.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import ipaddress
import json
import math
import uuid
from typing import Any

from analytics.exceptions import QueryRejected, WarehouseFailure
from analytics.settings import Settings
from analytics.warehouse import Result, Warehouse

SELECTS = ("SelectWithUnionQuery", "SelectIntersectExceptQuery")

# ClickHouse error codes that mean "your query went over a limit".
_LIMITS = {159: "query_timeout", 396: "too_many_rows", 164: "read_only", 62: "invalid_sql",
           241: "memory_limit", 307: "too_many_bytes", 158: "too_many_rows"}


async def run(warehouse: Warehouse, settings: Settings, query: str) -> Result:
    """Check and run caller-written SQL; every refusal is a QueryRejected (400)."""
    if not query.strip():
        raise QueryRejected("`query` is empty.", param="query")
    if len(query.encode()) > settings.sql_max_query_bytes:
        raise QueryRejected(f"The query is longer than {settings.sql_max_query_bytes} bytes.",
                            param="query", code="query_too_long")
    try:
        await _check_is_select(warehouse, query)
        return await warehouse.sql(query)
    except WarehouseFailure as exc:
        code = _LIMITS.get(exc.clickhouse_code or 0, "invalid_sql")
        raise QueryRejected(exc.message, param="query", code=code) from exc


async def _check_is_select(warehouse: Warehouse, query: str) -> None:
    ast = [str(r[0]) for r in (await warehouse.sql(f"EXPLAIN AST {query}")).rows]
    top = ast[0].split()[0] if ast else ""
    if top not in SELECTS:
        raise QueryRejected(f"Only SELECT queries are allowed here (this one is {top or 'empty'}).",
                            param="query", code="not_select")
    # The statement's own clauses are its direct children: the SELECT list, then an
    # INTO OUTFILE literal, a FORMAT identifier or SETTINGS, if present. The client
    # adds `FORMAT Native` itself; nothing else may be there.
    clauses = [line.strip() for line in ast[1:] if line.startswith(" ") and line[1] != " "]
    extra = [c for c in clauses if not c.startswith("ExpressionList") and c != "Identifier Native"]
    if extra:
        raise QueryRejected("Write a plain SELECT: no INTO OUTFILE, FORMAT or SETTINGS clause.",
                            param="query", code="not_select")


def json_value(value: Any) -> Any:
    """ClickHouse values that JSON has no type for, as strings."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | ipaddress.IPv4Address
                  | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def as_json(result: Result) -> bytes:
    body = {"object": "sql.result", "columns": list(result.columns),
            "data": [_plain(list(r)) for r in result.rows], "rows": len(result.rows)}
    return json.dumps(body, default=json_value, allow_nan=False).encode()


def as_csv(result: Result) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(json.dumps(_plain(v), default=json_value)
                        if isinstance(v, list | tuple | dict) else v for v in row)
    return buffer.getvalue().encode()
