"""Keys and tenants: an in-memory view of the compacted `sluice.keys` topic.

The gateway reads the topic from the start before it serves, then follows it, so a key
created or revoked on any gateway takes effect here within the follower's poll interval.
Secrets are never stored: a key is `sk-sluice-<key_id>-<secret>` and only the SHA-256 of
the whole string is kept; it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from gateway.follow import Follower
from schemas import topics
from schemas.events import KeyState, TenantState
from schemas.tiers import Budgets, CachePolicy, Limits, effective_limits

PREFIX = "sk-sluice-"
NO_CACHE = CachePolicy()
ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant's key, or the admin."""

    key_id: str
    tenant: str
    admin: bool
    limits: Limits
    budgets: Budgets
    cache: CachePolicy = NO_CACHE


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """A fresh (key_id, secret); the secret is shown to the caller once and never kept."""
    key_id = secrets.token_hex(8)
    return key_id, f"{PREFIX}{key_id}-{secrets.token_urlsafe(24)}"


def tenant_key(tenant: str) -> bytes:
    """Tenants share the keys topic with keys; their record key says which is which."""
    return f"tenant:{tenant}".encode()


class KeyStore(Follower):
    topic = topics.KEYS

    def __init__(self, consumer: AIOKafkaConsumer, admin_key: str | None) -> None:
        super().__init__(consumer)
        self._admin = hash_secret(admin_key) if admin_key else None
        self.keys: dict[str, KeyState] = {}
        self.tenants: dict[str, TenantState] = {}

    def apply(self, event: object) -> None:
        """Take a state event, unless a newer version of it is already here."""
        if isinstance(event, KeyState):
            known = self.keys.get(event.key_id)
            if known is None or event.version >= known.version:
                self.keys[event.key_id] = event
        elif isinstance(event, TenantState):
            known_t = self.tenants.get(event.tenant)
            if known_t is None or event.version >= known_t.version:
                self.tenants[event.tenant] = event

    def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token stands for, or None if it stands for nobody."""
        digest = hash_secret(token)
        if self._admin is not None and hmac.compare_digest(digest, self._admin):
            return Principal(ADMIN, ADMIN, True, Limits(), Budgets())
        if not token.startswith(PREFIX):
            return None
        key_id = token[len(PREFIX):].split("-", 1)[0]
        key = self.keys.get(key_id)
        if key is None or not hmac.compare_digest(digest, key.secret_hash) or key.revoked:
            return None
        tenant = self.tenants.get(key.tenant)
        if tenant is not None and tenant.disabled:
            return None
        return Principal(key.key_id, key.tenant, False,
                         effective_limits(key.tier, key.limits), key.budgets,
                         key.cache or (tenant.cache if tenant else NO_CACHE))
