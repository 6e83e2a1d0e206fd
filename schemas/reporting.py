"""The reporting API between the gateway and the analytics process: the paths the gateway
forwards, which the analytics process serves, and the headers that say who is asking.

The gateway authenticates the API key and sends the caller in the `x-sluice-*` headers
below, never the client's own; the analytics process believes them only with the internal
token (`SLUICE_INTERNAL_TOKEN`, the same on both).
"""

from __future__ import annotations

from dataclasses import dataclass

TOKEN = "x-sluice-internal-token"  # proves the call came from a gateway
TENANT = "x-sluice-tenant"  # the key's tenant
KEY_ID = "x-sluice-key-id"  # the key's id
ADMIN = "x-sluice-admin"  # "1" for the admin key, which has no tenant

ADMIN_PREFIX = "/v1/admin/"


def admin_only(path: str) -> bool:
    """Whether only the admin key may call `path` (the gateway and the analytics process
    both check)."""
    return path.startswith(ADMIN_PREFIX)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A path the gateway forwards to the analytics process."""

    method: str
    path: str


USAGE_EXPORT = Forwarded("GET", "/v1/usage/export")
ANALYTICS = Forwarded("GET", "/v1/analytics")
ADMIN_USAGE_EXPORT = Forwarded("GET", "/v1/admin/usage/export")
ADMIN_ANALYTICS = Forwarded("GET", "/v1/admin/analytics")
ADMIN_TENANTS = Forwarded("GET", "/v1/admin/analytics/tenants")
ADMIN_SINK = Forwarded("GET", "/v1/admin/analytics/sink")
ADMIN_SQL = Forwarded("POST", "/v1/admin/sql")

FORWARDED: tuple[Forwarded, ...] = (USAGE_EXPORT, ANALYTICS, ADMIN_USAGE_EXPORT,
                                    ADMIN_ANALYTICS, ADMIN_TENANTS, ADMIN_SINK, ADMIN_SQL)

# Not forwarded: the streams app of a restarted embedded stack reads what the ledger
# billed per key and UTC day since `?since=` (Unix s), with the token and `ADMIN: 1`.
# Answers {"rows": [[key_id, tenant, day, requests, prompt_tokens, completion_tokens,
# cached_tokens, cost_micros], …]}.
BILLED_PATH = "/internal/billed"
