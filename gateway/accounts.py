"""What a caller can ask about itself: `/v1/rate-limit`, `/v1/usage` and A/B readouts.

The answers are live: they come from the streams app's tables (through its web views),
not from this gateway's leases.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin import experiment
from gateway.auth import authenticate
from gateway.exceptions import Forbidden, InvalidRequest, ServiceUnavailable
from gateway.leases import Lease
from gateway.state import GatewayState, state
from schemas.tiers import USAGE_TOTALS

PERIODS = ("day", "month")


async def _streams(st: GatewayState, path: str, **params: str) -> Any:
    try:
        r = await st.streams.get(path, params=params, timeout=5.0)
        r.raise_for_status()
    except httpx.HTTPError:
        raise ServiceUnavailable("The streams service is unavailable. Please retry shortly.",
                                 code="streams_unavailable") from None
    return r.json()


def _period_key(period: str, now: float) -> str:
    t = time.gmtime(now)
    return time.strftime("%Y-%m-%d" if period == "day" else "%Y-%m", t)


async def rate_limit(request: Request) -> Response:
    """The caller's limits, what is left of each and when it resets, and its budgets."""
    st = state(request)
    principal = authenticate(request, st.keys, st.ips)
    if principal.admin:
        raise Forbidden("The admin key has no rate limits; ask with a tenant's key.")
    limits = principal.limits
    account = await _streams(st, f"/accounts/{principal.key_id}",
                             limits=limits.model_dump_json())
    status = account["status"]
    now = time.time()
    return JSONResponse({
        "key_id": principal.key_id,
        "tenant": principal.tenant,
        "limits": limits.model_dump(),
        "requests": {"limit_per_minute": limits.requests_per_minute, "burst": limits.burst,
                     "remaining": status["requests_remaining"],
                     "reset_s": status["requests_reset_s"]},
        "tokens": {"limit_per_minute": limits.tokens_per_minute,
                   "remaining": status["tokens_remaining"], "reset_s": status["tokens_reset_s"]},
        "concurrent": {"limit": limits.concurrent, "in_use": account["concurrent_in_use"]},
        "budgets": principal.budgets.model_dump(),
        "usage": {p: account["totals"].get(_period_key(p, now), {}) for p in PERIODS},
        "lease": _lease(st.leases.lease(principal.key_id), st.settings.resolved_gateway_id, now),
    })


def _lease(lease: Lease | None, gateway_id: str, now: float) -> dict[str, Any]:
    """What this replica holds of the key's budget, and how often its requests waited
    for the limiter here (`waited`) rather than finding a lease fetched ahead."""
    lease = lease or Lease()
    return {"gateway_id": gateway_id, "requests": lease.requests, "tokens": lease.tokens,
            "slots": lease.slots, "expires_in_s": round(max(0.0, lease.expires_at - now), 3),
            "round_trips": {"waited": lease.waited, "ahead": lease.ahead}}


async def usage(request: Request) -> Response:
    """The caller's live totals for the current UTC day or month, and its tenant's."""
    st = state(request)
    principal = authenticate(request, st.keys, st.ips)
    period = request.query_params.get("period", "day")
    if period not in PERIODS:
        raise InvalidRequest("'period' must be 'day' or 'month'.", param="period")
    key = _period_key(period, time.time())
    empty = dict.fromkeys(USAGE_TOTALS, 0)
    account = await _streams(st, f"/accounts/{principal.key_id}")
    body: dict[str, Any] = {"period": period, "start": key, "key_id": principal.key_id,
                            "key": {**empty, **account["totals"].get(key, {})}}
    if not principal.admin:
        tenant = await _streams(st, f"/tenants/{principal.tenant}")
        body["tenant"] = principal.tenant
        body["tenant_totals"] = {**empty, **tenant["totals"].get(key, {})}
    return JSONResponse(body)


async def ab_test(request: Request) -> Response:
    """An A/B test's definition, per-variant metrics, significance tests and leader."""
    st = state(request)
    authenticate(request, st.keys, st.ips)
    e = experiment(st, request)
    readout = await _streams(st, f"/experiments/{e.experiment_id}")
    readout["variants"]["a"]["model"] = e.model_a
    readout["variants"]["b"]["model"] = e.model_b
    return JSONResponse({**e.model_dump(mode="json", exclude={"event_id", "event_type", "ts",
                                                               "schema_version"}),
                         **{k: v for k, v in readout.items() if k != "experiment_id"}})


routes = [
    Route("/v1/rate-limit", rate_limit, methods=["GET"]),
    Route("/v1/usage", usage, methods=["GET"]),
    Route("/v1/ab-tests/{experiment_id}", ab_test, methods=["GET"]),
    # Also under the admin's paths, where the dashboard reads it; listed here rather than
    # in admin.py because this module imports admin.py.
    Route("/v1/admin/ab-tests/{experiment_id}", ab_test, methods=["GET"]),
]
