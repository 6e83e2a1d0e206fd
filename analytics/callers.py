"""Who is asking, as the gateway vouches for it, and which rows that lets them see.

The gateway authenticates the API key and forwards the request with:

- `x-sluice-internal-token`: must equal `SLUICE_INTERNAL_TOKEN` (checked when it is set);
- `x-sluice-tenant`: the key's tenant; `x-sluice-key-id`: the key's id;
- `x-sluice-admin: 1` for the admin key.

A caller that is not admin is always scoped to the tenant in its header: no query
parameter can widen that. An admin may pass `tenant=` to look at one tenant, or nothing
to look at all of them.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request

from analytics.exceptions import InvalidRequest, PermissionDenied, Unauthenticated
from schemas.reporting import ADMIN, KEY_ID, TENANT, TOKEN


@dataclass(frozen=True)
class Caller:
    tenant: str | None
    key_id: str | None
    admin: bool


@dataclass(frozen=True)
class Scope:
    """The rows a query may read: one tenant's, or (admin only) every tenant's."""

    tenant: str | None

    @property
    def everything(self) -> bool:
        return self.tenant is None


def identify(request: Request, internal_token: str, *, admin_only: bool = False) -> Caller:
    """The caller the gateway forwarded, or 401/403."""
    if internal_token:
        sent = request.headers.get(TOKEN, "")
        if not hmac.compare_digest(sent.encode(), internal_token.encode()):
            raise Unauthenticated("This API is reached through the Sluice gateway.")
    admin = request.headers.get(ADMIN, "") == "1"
    tenant = request.headers.get(TENANT) or None
    if not admin and tenant is None:
        raise Unauthenticated("The request carries no caller; call it through the gateway "
                              "with an API key.")
    if admin_only and not admin:
        raise PermissionDenied("This endpoint needs the admin key.")
    return Caller(tenant=tenant, key_id=request.headers.get(KEY_ID) or None, admin=admin)


def scope(caller: Caller, request: Request) -> Scope:
    """The rows this caller may read, given any `tenant` parameters it sent."""
    asked = set(request.query_params.getlist("tenant"))
    if caller.admin:
        if len(asked) > 1:
            raise InvalidRequest("Give at most one tenant.", param="tenant")
        return Scope(next(iter(asked)) if asked else None)
    if asked - {caller.tenant}:
        raise PermissionDenied("An API key sees its own tenant's usage only.", param="tenant")
    return Scope(caller.tenant)
