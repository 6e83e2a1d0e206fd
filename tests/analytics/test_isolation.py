"""A key that is not the admin's sees its own tenant's rows and nothing else, whatever
parameters or headers it sends."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.analytics.conftest import Tenants
from tests.analytics.harness import caller

READS = ["/v1/usage/export", "/v1/analytics"]
ADMIN_ONLY = [("GET", "/v1/admin/usage/export"), ("GET", "/v1/admin/analytics"),
              ("GET", "/v1/admin/analytics/tenants"), ("GET", "/v1/admin/analytics/sink"),
              ("POST", "/v1/admin/sql")]


def _period(t: Tenants) -> dict[str, str]:
    return {"from": t.start.isoformat(), "to": t.end.isoformat()}


def _leaks(text: str, t: Tenants) -> list[str]:
    """Anything of the other tenant's in a response."""
    theirs = [t.theirs.tenant, "key-g1", "key-g2", "model-z"]
    return [s for s in theirs if s in text]


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize("tenants", [["theirs"], ["ours", "theirs"], ["theirs", "ours"], [""]])
def test_asking_for_another_tenant_is_refused(api: TestClient, two_tenants: Tenants,
                                              path: str, tenants: list[str]) -> None:
    names = {"ours": two_tenants.ours.tenant, "theirs": two_tenants.theirs.tenant, "": ""}
    params = [*_period(two_tenants).items(), *(("tenant", names[t]) for t in tenants)]
    r = api.get(path, params=params, headers=caller(two_tenants.ours.tenant))
    assert r.request.url.params.get_list("tenant") == [names[t] for t in tenants]
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "permission_denied"
    assert r.json()["error"]["param"] == "tenant"


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize("params", [
    {"key": "key-g1"},                                   # their key
    {"model": "model-z"},                                # their model
    {"key": "x' OR '1'='1"},                             # SQL in a value
    {"model": "model-x' OR tenant != '"},
    {"key": "key-a') OR (1=1"},
    {"tenant": "{ours}", "key": "key-g2"},
])
def test_filters_only_narrow_within_the_callers_tenant(api: TestClient, two_tenants: Tenants,
                                                       path: str, params: dict[str, str]
                                                       ) -> None:
    params = {k: v.format(ours=two_tenants.ours.tenant) for k, v in params.items()}
    r = api.get(path, params={**_period(two_tenants), **params},
                headers=caller(two_tenants.ours.tenant, key_id="key-a"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert _leaks(r.text, two_tenants) == []
    assert body["tenant"] == two_tenants.ours.tenant
    requests = body["totals"]["requests"] if "totals" in body else body["requests"]
    assert requests == 0


@pytest.mark.parametrize("path", READS)
def test_the_callers_own_rows_are_all_there_and_only_those(api: TestClient,
                                                           two_tenants: Tenants,
                                                           path: str) -> None:
    for group_by in ("day", "model", "key", "day,model,key"):
        r = api.get(path, params={**_period(two_tenants), "group_by": group_by},
                    headers=caller(two_tenants.ours.tenant))
        assert r.status_code == 200
        assert _leaks(r.text, two_tenants) == []
        body = r.json()
        requests = body["totals"]["requests"] if "totals" in body else body["requests"]
        assert requests == two_tenants.ours.expected.requests


def test_grouping_by_tenant_is_for_the_admin(api: TestClient, two_tenants: Tenants) -> None:
    r = api.get("/v1/usage/export", params={**_period(two_tenants), "group_by": "tenant"},
                headers=caller(two_tenants.ours.tenant))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "group_by"


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
def test_admin_endpoints_refuse_tenant_keys(api: TestClient, two_tenants: Tenants,
                                            method: str, path: str) -> None:
    r = api.request(method, path, params={"tenant": two_tenants.theirs.tenant},
                    json={"query": "SELECT * FROM usage"},
                    headers=caller(two_tenants.ours.tenant))
    assert r.status_code == 403
    assert _leaks(r.text, two_tenants) == []


@pytest.mark.parametrize("headers", [
    {"x-sluice-tenant": "{theirs}"},                                       # no gateway token
    {"x-sluice-tenant": "{theirs}", "x-sluice-internal-token": "guess"},  # a wrong one
    {"x-sluice-admin": "1"},
    {"x-sluice-admin": "1", "x-sluice-internal-token": ""},
])
@pytest.mark.parametrize("path", [*READS, "/v1/admin/usage/export"])
def test_only_the_gateway_can_say_who_is_calling(api: TestClient, two_tenants: Tenants,
                                                 headers: dict[str, str], path: str) -> None:
    headers = {k: v.format(theirs=two_tenants.theirs.tenant) for k, v in headers.items()}
    r = api.get(path, params=_period(two_tenants), headers=headers)
    assert r.status_code == 401
    assert _leaks(r.text, two_tenants) == []


@pytest.mark.parametrize("flag", ["true", "yes", "0", ""])
def test_only_admin_1_is_admin(api: TestClient, two_tenants: Tenants, flag: str) -> None:
    headers = {**caller(two_tenants.ours.tenant), "x-sluice-admin": flag}
    r = api.get("/v1/admin/analytics", params={"tenant": two_tenants.theirs.tenant},
                headers=headers)
    assert r.status_code == 403


def test_the_admin_sees_any_tenant_and_all_of_them(api: TestClient,
                                                   two_tenants: Tenants) -> None:
    admin = caller(admin=True)
    r = api.get("/v1/admin/analytics", headers=admin,
                params={**_period(two_tenants), "tenant": two_tenants.theirs.tenant})
    assert r.status_code == 200
    assert r.json()["requests"] == two_tenants.theirs.expected.requests
    r = api.get("/v1/admin/analytics/tenants", headers=admin, params=_period(two_tenants))
    by_tenant = {row["tenant"]: row["requests"] for row in r.json()["data"]}
    assert by_tenant[two_tenants.ours.tenant] == two_tenants.ours.expected.requests
    assert by_tenant[two_tenants.theirs.tenant] == two_tenants.theirs.expected.requests
    r = api.get("/v1/admin/usage/export", headers=admin,
                params={**_period(two_tenants), "group_by": "tenant", "format": "csv"})
    assert two_tenants.theirs.tenant in r.text and two_tenants.ours.tenant in r.text
