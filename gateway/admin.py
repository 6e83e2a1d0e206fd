"""`/v1/admin/...`: tenants, keys, prices and A/B tests, for the admin key only.

Every change is a state event on a compacted topic (`sluice.keys`, `sluice.prices`,
`sluice.experiments`); there is no other database. A change is acknowledged once the
broker has it, and applied here at once so this gateway reads its own writes; the
others see it as they follow the topic.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.journal import Record
from gateway import protocol
from gateway.auth import require_admin
from gateway.exceptions import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from gateway.keys import hash_secret, new_secret, tenant_key
from gateway.state import GatewayState, state
from schemas import topics
from schemas.admin import (
    ExperimentCreate,
    KeyCreate,
    KeyUpdate,
    KeyView,
    PriceSet,
    TenantCreate,
    TenantUpdate,
    dump,
)
from schemas.events import (
    Event,
    Experiment,
    KeyState,
    PriceSchedule,
    PriceVersion,
    TenantState,
    new_id,
)
from schemas.tiers import effective_limits


async def _admin(request: Request) -> GatewayState:
    st = state(request)
    require_admin(request, st.keys, st.ips)
    return st


async def _publish(st: GatewayState, topic: str, key: bytes, event: Event) -> None:
    value = event.encode()
    await (await st.producer.send(topic, value, key=key))
    if st.journal is not None:  # the embedded broker forgets: on disk before answering
        try:
            await st.journal.append(Record(topic, key, value))
        except OSError as exc:
            raise ServiceUnavailable(
                f"The change is in effect but could not be written to the journal "
                f"({st.journal.path}: {exc.strerror}); it will be lost when the stack "
                "restarts unless it is made again.", code="journal_unavailable") from None


def _json(body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status)


def _key_view(key: KeyState, secret: str | None = None) -> dict[str, Any]:
    return dump(KeyView(
        key_id=key.key_id, tenant=key.tenant, name=key.name, tier=key.tier,
        limits=effective_limits(key.tier, key.limits), overrides=key.limits,
        budgets=key.budgets, cache=key.cache, revoked=key.revoked, created_at=key.created_at,
        version=key.version, secret=secret))


def _tenant_view(tenant: TenantState, st: GatewayState) -> dict[str, Any]:
    keys = sum(1 for k in st.keys.keys.values() if k.tenant == tenant.tenant)
    return {**tenant.model_dump(mode="json", exclude={"event_id", "event_type", "ts",
                                                      "schema_version"}), "keys": keys}


# -- tenants ------------------------------------------------------------------------------


async def _ensure_tenant(st: GatewayState, name: str) -> TenantState:
    tenant = st.keys.tenants.get(name)
    if tenant is None:
        tenant = TenantState(tenant=name, created_at=time.time())
        await _publish(st, topics.KEYS, tenant_key(name), tenant)
        st.keys.apply(tenant)
    return tenant


async def create_tenant(request: Request) -> Response:
    st = await _admin(request)
    body = await protocol.parse(request, TenantCreate)
    if body.tenant in st.keys.tenants:
        raise Conflict(f"Tenant '{body.tenant}' already exists.", param="tenant")
    tenant = TenantState(tenant=body.tenant, name=body.name, default_tier=body.default_tier,
                         budgets=body.budgets, cache=body.cache, created_at=time.time())
    await _publish(st, topics.KEYS, tenant_key(tenant.tenant), tenant)
    st.keys.apply(tenant)
    return _json(_tenant_view(tenant, st), 201)


async def list_tenants(request: Request) -> Response:
    st = await _admin(request)
    return _json({"object": "list", "data": [_tenant_view(t, st) for t in
                                             sorted(st.keys.tenants.values(),
                                                    key=lambda t: t.tenant)]})


def _tenant(st: GatewayState, request: Request) -> TenantState:
    name = request.path_params["tenant"]
    tenant = st.keys.tenants.get(name)
    if tenant is None:
        raise NotFound(f"No tenant '{name}'.", param="tenant")
    return tenant


async def get_tenant(request: Request) -> Response:
    st = await _admin(request)
    return _json(_tenant_view(_tenant(st, request), st))


async def update_tenant(request: Request) -> Response:
    st = await _admin(request)
    tenant = _tenant(st, request)
    body = await protocol.parse(request, TenantUpdate)
    changes = {k: v for k, v in body.model_dump().items() if v is not None}
    return _json(_tenant_view(await _replace_tenant(st, tenant, **changes), st))


async def disable_tenant(request: Request) -> Response:
    st = await _admin(request)
    updated = await _replace_tenant(st, _tenant(st, request), disabled=True)
    return _json(_tenant_view(updated, st))


async def _replace_tenant(st: GatewayState, tenant: TenantState, **changes: Any
                          ) -> TenantState:
    updated = TenantState.model_validate({**tenant.model_dump(), **changes,
                                          "version": tenant.version + 1, "event_id": new_id(),
                                          "ts": time.time()})
    await _publish(st, topics.KEYS, tenant_key(updated.tenant), updated)
    st.keys.apply(updated)
    return updated


# -- keys ---------------------------------------------------------------------------------


async def create_key(request: Request) -> Response:
    st = await _admin(request)
    body = await protocol.parse(request, KeyCreate)
    tenant = await _ensure_tenant(st, body.tenant)
    key_id, secret = new_secret()
    key = KeyState(key_id=key_id, tenant=body.tenant, name=body.name,
                   tier=body.tier or tenant.default_tier, secret_hash=hash_secret(secret),
                   limits=body.limits, budgets=body.budgets or tenant.budgets,
                   cache=body.cache, created_at=time.time())
    await _publish(st, topics.KEYS, key_id.encode(), key)
    st.keys.apply(key)
    return _json(_key_view(key, secret), 201)


async def list_keys(request: Request) -> Response:
    st = await _admin(request)
    tenant = request.query_params.get("tenant")
    keys = [k for k in st.keys.keys.values() if tenant is None or k.tenant == tenant]
    return _json({"object": "list",
                  "data": [_key_view(k) for k in sorted(keys, key=lambda k: k.created_at)]})


def _key(st: GatewayState, request: Request) -> KeyState:
    key_id = request.path_params["key_id"]
    key = st.keys.keys.get(key_id)
    if key is None:
        raise NotFound(f"No key '{key_id}'.", param="key_id")
    return key


async def get_key(request: Request) -> Response:
    st = await _admin(request)
    return _json(_key_view(_key(st, request)))


async def _replace_key(st: GatewayState, key: KeyState, **changes: Any) -> KeyState:
    updated = KeyState.model_validate({**key.model_dump(), **changes,
                                       "version": key.version + 1, "event_id": new_id(),
                                       "ts": time.time()})
    await _publish(st, topics.KEYS, key.key_id.encode(), updated)
    st.keys.apply(updated)
    return updated


async def update_key(request: Request) -> Response:
    st = await _admin(request)
    key = _key(st, request)
    body = await protocol.parse(request, KeyUpdate)
    changes = {k: v for k, v in body.model_dump().items() if v is not None}
    updated = await _replace_key(st, key, **changes)
    return _json(_key_view(updated))


async def revoke_key(request: Request) -> Response:
    st = await _admin(request)
    updated = await _replace_key(st, _key(st, request), revoked=True)
    return _json(_key_view(updated))


# -- prices -------------------------------------------------------------------------------


async def set_price(request: Request) -> Response:
    st = await _admin(request)
    model = request.path_params["model"]
    body = await protocol.parse(request, PriceSet)
    if not st.registry.known(model):
        raise NotFound(f"No worker serves a model named '{model}', so it cannot be priced.",
                       param="model", code="model_not_found")
    current = st.prices.schedules.get(model)
    versions = current.versions if current else ()
    version = PriceVersion(
        version=len(versions) + 1,
        effective_from=body.effective_from or time.time(),
        input_micros_per_million=body.input_micros_per_million,
        output_micros_per_million=body.output_micros_per_million,
        cached_micros_per_million=(body.cached_micros_per_million
                                   if body.cached_micros_per_million is not None
                                   else body.input_micros_per_million),
        cache_hit_micros_per_million=body.cache_hit_micros_per_million)
    schedule = PriceSchedule(model=model, versions=(*versions, version))
    await _publish(st, topics.PRICES, model.encode(), schedule)
    st.prices.apply(schedule)
    return _json(schedule.model_dump(mode="json", include={"model", "versions"}))


async def list_prices(request: Request) -> Response:
    st = await _admin(request)
    return _json({"object": "list", "data": [
        s.model_dump(mode="json", include={"model", "versions"})
        for s in sorted(st.prices.schedules.values(), key=lambda s: s.model)]})


# -- A/B tests ----------------------------------------------------------------------------


def _experiment_view(e: Experiment) -> dict[str, Any]:
    return e.model_dump(mode="json", exclude={"event_id", "event_type", "ts",
                                              "schema_version"})


async def create_experiment(request: Request) -> Response:
    st = await _admin(request)
    body = await protocol.parse(request, ExperimentCreate)
    if body.model_a == body.model_b:
        raise InvalidRequest("model_a and model_b must differ.", param="model_b")
    for param in ("model_a", "model_b"):
        model = getattr(body, param)
        if not st.registry.live(model):
            raise InvalidRequest(f"No worker serves '{model}'.", param=param,
                                 code="model_not_found")
    if st.experiments.running_for(body.model_a) is not None:
        raise Conflict(f"An A/B test on '{body.model_a}' is already running.",
                       param="model_a")
    experiment = Experiment(experiment_id=f"ab_{new_id()[:12]}", name=body.name,
                            model_a=body.model_a, model_b=body.model_b, split=body.split,
                            created_at=time.time())
    await _publish(st, topics.EXPERIMENTS, experiment.experiment_id.encode(), experiment)
    st.experiments.apply(experiment)
    return _json(_experiment_view(experiment), 201)


async def list_experiments(request: Request) -> Response:
    st = await _admin(request)
    return _json({"object": "list", "data": [
        _experiment_view(e) for e in sorted(st.experiments.experiments.values(),
                                            key=lambda e: e.created_at)]})


def experiment(st: GatewayState, request: Request) -> Experiment:
    experiment_id = request.path_params["experiment_id"]
    found = st.experiments.experiments.get(experiment_id)
    if found is None:
        raise NotFound(f"No A/B test '{experiment_id}'.", param="experiment_id")
    return found


async def stop_experiment(request: Request) -> Response:
    st = await _admin(request)
    e = experiment(st, request)
    stopped = Experiment.model_validate({**e.model_dump(), "status": "stopped",
                                         "stopped_at": time.time(), "version": e.version + 1,
                                         "event_id": new_id(), "ts": time.time()})
    await _publish(st, topics.EXPERIMENTS, e.experiment_id.encode(), stopped)
    st.experiments.apply(stopped)
    return _json(_experiment_view(stopped))


routes = [
    Route("/v1/admin/tenants", create_tenant, methods=["POST"]),
    Route("/v1/admin/tenants", list_tenants, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}", get_tenant, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}", update_tenant, methods=["PATCH"]),
    Route("/v1/admin/tenants/{tenant}", disable_tenant, methods=["DELETE"]),
    Route("/v1/admin/keys", create_key, methods=["POST"]),
    Route("/v1/admin/keys", list_keys, methods=["GET"]),
    Route("/v1/admin/keys/{key_id}", get_key, methods=["GET"]),
    Route("/v1/admin/keys/{key_id}", update_key, methods=["PATCH"]),
    Route("/v1/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
    Route("/v1/admin/prices", list_prices, methods=["GET"]),
    Route("/v1/admin/prices/{model}", set_price, methods=["PUT"]),
    Route("/v1/admin/ab-tests", create_experiment, methods=["POST"]),
    Route("/v1/admin/ab-tests", list_experiments, methods=["GET"]),
    Route("/v1/admin/ab-tests/{experiment_id}/stop", stop_experiment, methods=["POST"]),
]
