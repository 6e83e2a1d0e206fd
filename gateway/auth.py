"""Who is calling: bearer keys, the admin key, and a limit on unauthenticated traffic.

Requests that fail authentication are counted per client IP in a token bucket of their
own; once it is empty that IP gets 429s, so a flood of bad keys costs a dictionary
lookup each and cannot crowd out callers with good keys. `X-Forwarded-For` is believed
only when the direct peer is one of the configured proxies.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict

from starlette.requests import Request

from gateway.exceptions import Forbidden, RateLimited, Unauthorized
from gateway.keys import KeyStore, Principal

MAX_TRACKED_IPS = 100_000


class IpLimiter:
    def __init__(self, per_minute: int, burst: int, trusted_proxies: list[str]) -> None:
        self._rate = per_minute / 60
        self._burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def _trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self._proxies)

    def client_ip(self, request: Request) -> str:
        peer = request.client.host if request.client else "unknown"
        if not self._trusted(peer):
            return peer
        hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if not self._trusted(hop):
                return hop
        return peer

    def allow(self, ip: str) -> bool:
        """Take one token from `ip`'s bucket; False when it is empty."""
        now = time.monotonic()
        level, at = self._buckets.pop(ip, (self._burst, now))
        level = min(self._burst, level + (now - at) * self._rate)
        allowed = level >= 1
        self._buckets[ip] = (level - 1 if allowed else level, now)
        if len(self._buckets) > MAX_TRACKED_IPS:
            self._buckets.popitem(last=False)
        return allowed


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def authenticate(request: Request, keys: KeyStore, ips: IpLimiter) -> Principal:
    """The caller's principal; 401 for a missing, unknown or revoked key (429 under flood)."""
    token = _bearer(request)
    principal = keys.authenticate(token) if token else None
    if principal is not None:
        request.state.principal = principal
        return principal
    if not ips.allow(ips.client_ip(request)):
        raise RateLimited("Too many unauthenticated requests from this address.",
                          code="rate_limit_exceeded", retry_after=5)
    if token is None:
        raise Unauthorized("You didn't provide an API key. Send it in the Authorization "
                           "header as 'Bearer <key>'.", code="missing_api_key")
    raise Unauthorized("Incorrect API key provided, or the key was revoked.")


def require_admin(request: Request, keys: KeyStore, ips: IpLimiter) -> Principal:
    principal = authenticate(request, keys, ips)
    if not principal.admin:
        raise Forbidden("This endpoint needs the admin key.")
    return principal
