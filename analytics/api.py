"""The reporting API, served by the analytics process (Starlette on uvicorn).

The gateway forwards these paths (`schemas.reporting.FORWARDED`), with the caller's
identity in `x-sluice-*` headers (see `analytics/callers.py`), so clients use one base URL
and one key:

    GET  /v1/usage/export              the caller's tenant's usage, streamed
                                       (format=json|csv, from, to, group_by=day,model,key,
                                       key=<key id>, model=<model>)
    GET  /v1/analytics                 the caller's summary (from, to, key, model; with
                                       bucket=minute|hour|day also a time series)
    GET  /v1/admin/usage/export        like /v1/usage/export for one tenant (tenant=) or
                                       all; group_by may also take `tenant`
    GET  /v1/admin/analytics           one tenant's summary (tenant=) or everyone's, with
                                       the top tenants
    GET  /v1/admin/analytics/tenants   every tenant's totals in a period (from, to)
    GET  /v1/admin/analytics/sink      the sink's counters
    POST /v1/admin/sql                 read-only SQL: {"query": "...", "format": "json|csv"}

`/health` and `/ready` are for the supervisor and are not forwarded. The gateway must
strip any `x-sluice-*` header a client sent before it adds its own.

The process also runs the sink (`analytics/sink.py`) in its lifespan: with chDB a data
path is open in one process only, so the one process both writes and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from analytics import callers, errors, export, migrations, params, reports, sql
from analytics.exceptions import (
    AnalyticsError,
    EngineLocked,
    InvalidRequest,
    WarehouseUnavailable,
)
from analytics.settings import Settings
from analytics.sink import Sink
from analytics.warehouse import Warehouse
from schemas import reporting

log = logging.getLogger("sluice.analytics")

MIGRATE_RETRY_S = 2.0
SINK_STOP_TIMEOUT_S = 60.0


@dataclass
class AnalyticsState:
    settings: Settings
    warehouse: Warehouse
    ready: asyncio.Event
    sink: Sink | None

    def require_ready(self) -> None:
        if not self.ready.is_set():
            raise WarehouseUnavailable("ClickHouse is not reachable yet; try again shortly.")


def state(request: Request) -> AnalyticsState:
    return request.app.state.analytics  # type: ignore[no-any-return]


def _caller(request: Request, admin_only: bool = False) -> callers.Caller:
    return callers.identify(request, state(request).settings.internal_token,
                            admin_only=admin_only)


# -- handlers -------------------------------------------------------------------------------


async def usage_export(request: Request) -> Response:
    """The usage of one tenant (or, for the admin, of any or all), streamed."""
    st = state(request)
    caller = _caller(request, admin_only=reporting.admin_only(request.url.path))
    scope = callers.scope(caller, request)
    query = request.query_params
    fmt = params.output_format(query)
    job = reports.Export(scope, params.period(query, st.settings.analytics_max_range_days),
                         params.filters(query), params.group_by(query, caller.admin))
    st.require_ready()
    stream = await job.rows(st.warehouse)
    headers = {
        "content-disposition": f'attachment; filename="{export.filename(job, fmt)}"',
        "x-sluice-period-from": job.period.describe()["from"],
        "x-sluice-period-to": job.period.describe()["to"],
    }
    if fmt == "csv":
        return StreamingResponse(export.as_csv(job, stream), media_type="text/csv",
                                 headers=headers)
    return StreamingResponse(export.as_json(job, stream), media_type="application/json",
                             headers=headers)


async def summary(request: Request) -> Response:
    """Requests, errors, tokens, spend by day, top models, cache and latency; with
    `bucket=` also `series`, the same measures per minute, hour or day (for charts)."""
    st = state(request)
    caller = _caller(request, admin_only=reporting.admin_only(request.url.path))
    scope = callers.scope(caller, request)
    query = request.query_params
    period = params.period(query, st.settings.analytics_max_range_days)
    bucket = params.bucket(query, period, st.settings.analytics_max_buckets)
    job = reports.Summary(scope, period, params.filters(query))
    st.require_ready()
    if bucket is None:
        return JSONResponse(await job.run(st.warehouse))
    series = reports.Series(scope, period, params.filters(query), bucket)
    body, points = await asyncio.gather(job.run(st.warehouse), series.run(st.warehouse))
    return JSONResponse({**body, "series": points})


async def tenants(request: Request) -> Response:
    st = state(request)
    _caller(request, admin_only=True)
    period = params.period(request.query_params, st.settings.analytics_max_range_days)
    st.require_ready()
    rows = await reports.tenants(st.warehouse, period)
    return JSONResponse({"object": "list", "period": period.describe(), "data": rows})


async def sink_status(request: Request) -> Response:
    st = state(request)
    _caller(request, admin_only=True)
    if st.sink is None:
        return JSONResponse({"object": "analytics.sink", "enabled": False})
    return JSONResponse({"object": "analytics.sink", "enabled": True,
                         **dataclasses.asdict(st.sink.stats)})


async def admin_sql(request: Request) -> Response:
    """Read-only SQL over every table, for the admin."""
    st = state(request)
    _caller(request, admin_only=True)
    raw = await request.body()
    if len(raw) > st.settings.sql_max_query_bytes + 1024:
        raise InvalidRequest("The request body is too large.", code="query_too_long")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise InvalidRequest("The body must be JSON: {\"query\": \"SELECT …\"}.") from None
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise InvalidRequest("`query` must be a string.", param="query")
    fmt = body.get("format", params.one(request.query_params, "format") or "json")
    if fmt not in params.FORMATS:
        raise InvalidRequest(f"`format` must be one of {', '.join(params.FORMATS)}.",
                             param="format")
    st.require_ready()
    result = await sql.run(st.warehouse, st.settings, body["query"])
    if fmt == "csv":
        return Response(sql.as_csv(result), media_type="text/csv")
    return Response(sql.as_json(result), media_type="application/json")


async def billed(request: Request) -> Response:
    """For the streams app of a restarted embedded stack (internal: the token and the
    admin flag): what the ledger billed per key and UTC day since `since` (Unix s)."""
    st = state(request)
    _caller(request, admin_only=True)
    try:
        since = datetime.fromtimestamp(int(request.query_params.get("since", "")), UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest("'since' must be a Unix time in seconds.", param="since") from None
    st.require_ready()
    return JSONResponse({"rows": await reports.billed_per_day(st.warehouse, since)})


async def health(request: Request) -> Response:
    """The process is alive and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """ClickHouse answers and is migrated; the sink (if it runs here) is consuming: in its
    group, with its partitions, so an event published now lands."""
    st = state(request)
    clickhouse = st.ready.is_set() and await st.warehouse.ping()
    sink = st.sink is None or st.sink.stats.consuming
    ok = clickhouse and sink
    return JSONResponse({"status": "ready" if ok else "unavailable", "clickhouse": clickhouse,
                         "sink": None if st.sink is None else st.sink.stats.consuming},
                        status_code=200 if ok else 503,
                        headers=None if ok else {"Retry-After": "1"})


# -- the app --------------------------------------------------------------------------------

# What answers each path the gateway forwards.
HANDLERS = {
    reporting.USAGE_EXPORT: usage_export,
    reporting.ANALYTICS: summary,
    reporting.ADMIN_USAGE_EXPORT: usage_export,
    reporting.ADMIN_ANALYTICS: summary,
    reporting.ADMIN_TENANTS: tenants,
    reporting.ADMIN_SINK: sink_status,
    reporting.ADMIN_SQL: admin_sql,
}


async def _migrate(warehouse: Warehouse) -> None:
    def apply() -> None:
        with warehouse.writer() as client:
            ran = migrations.migrate(client)
        for m in ran:
            log.info("applied migration %04d_%s", m.version, m.name)
    await asyncio.to_thread(apply)


async def _keep_migrating(warehouse: Warehouse, ready: asyncio.Event) -> None:
    """Until ClickHouse answers and is migrated; the API is 503 and the sink waits."""
    while True:
        try:
            await _migrate(warehouse)
        except WarehouseUnavailable as exc:
            log.warning("%s; retrying in %.0fs", exc.message, MIGRATE_RETRY_S)
            await asyncio.sleep(MIGRATE_RETRY_S)
            continue
        ready.set()
        return


def create_app(settings: Settings | None = None) -> Starlette:
    """The reporting API, with the sink running beside it unless `analytics_sink` is off."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        warehouse = Warehouse(settings)
        ready = asyncio.Event()
        try:
            await _migrate(warehouse)
            ready.set()
        except EngineLocked:
            warehouse.close()
            raise
        except WarehouseUnavailable as exc:
            log.warning("%s; reporting answers 503 until it is", exc.message)
        migrating = None if ready.is_set() else asyncio.create_task(
            _keep_migrating(warehouse, ready))
        sink = Sink(settings, warehouse, ready) if settings.analytics_sink else None
        sink_task = asyncio.create_task(sink.run()) if sink else None
        app.state.analytics = AnalyticsState(settings, warehouse, ready, sink)
        try:
            yield
        finally:
            if sink and sink_task:
                # Land and commit the batch in hand before leaving the group.
                sink.stop()
                try:
                    await asyncio.wait_for(sink_task, SINK_STOP_TIMEOUT_S)
                except (TimeoutError, Exception) as exc:
                    log.error("sink did not stop cleanly: %r", exc)
            if migrating:
                migrating.cancel()
            warehouse.close()

    return Starlette(
        routes=[
            *(Route(f.path, HANDLERS[f], methods=[f.method]) for f in reporting.FORWARDED),
            Route("/health", health, methods=["GET"]),
            Route(reporting.BILLED_PATH, billed, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
        ],
        exception_handlers={
            AnalyticsError: errors.analytics_error,
            HTTPException: errors.http_error,
            Exception: errors.unexpected,
        },
        lifespan=lifespan,
    )
