"""`sluice keys|tenants|prices|ab`: the admin API from the command line.

Commands talk to a gateway (`SLUICE_URL`, default http://127.0.0.1:8080) with the admin
key (`SLUICE_ADMIN_KEY`, or the one `sluice up` keeps in `$SLUICE_HOME/admin_key`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from decimal import Decimal
from typing import Any

from broker.settings import SluiceSettings
from schemas.tiers import BUDGET_LEVELS, BUDGET_NAMES, CACHE_MODES, LIMIT_NAMES, TIERS


def admin_key() -> str | None:
    return SluiceSettings().known_admin_key()


def _call(method: str, path: str, body: Any = None) -> Any:
    import httpx

    url = os.environ.get("SLUICE_URL", "http://127.0.0.1:8080").rstrip("/")
    key = admin_key()
    if not key:
        sys.exit("sluice: set SLUICE_ADMIN_KEY (or start the stack with `sluice up`)")
    try:
        r = httpx.request(method, url + path, json=body, timeout=30,
                          headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        sys.exit(f"sluice: cannot reach {url}: {exc}")
    if r.status_code >= 400:
        try:
            error = r.json()["error"]
            sys.exit(f"sluice: {r.status_code} {error.get('param') or ''} {error['message']}")
        except (ValueError, KeyError):
            sys.exit(f"sluice: {r.status_code} {r.text}")
    return r.json()


def _print(data: Any) -> int:
    print(json.dumps(data, indent=2))
    return 0


def _limits(args: argparse.Namespace) -> dict[str, int]:
    return {n: getattr(args, n) for n in LIMIT_NAMES if getattr(args, n) is not None}


def _budget(value: str) -> tuple[str, str, int]:
    """`daily_tokens.hard=5000` → ("daily_tokens", "hard", 5000)."""
    name, _, amount = value.partition("=")
    budget, _, level = name.partition(".")
    if budget not in BUDGET_NAMES or level not in BUDGET_LEVELS or not amount.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected BUDGET.{'|'.join(BUDGET_LEVELS)}=N with BUDGET one of "
            f"{', '.join(BUDGET_NAMES)}")
    return budget, level, int(amount)


def _budgets(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for budget, level, amount in args.budget or ():
        out.setdefault(budget, {})[level] = amount
    return out


def _limit_flags(p: argparse.ArgumentParser) -> None:
    for name in LIMIT_NAMES:  # --requests-per-minute sets args.requests_per_minute
        p.add_argument(f"--{name.replace('_', '-')}", type=int)
    p.add_argument("--budget", type=_budget, action="append", metavar="BUDGET.LEVEL=N",
                   help="a quota or budget, e.g. daily_tokens.hard=100000 or "
                        "monthly_spend_micros.soft=5000000 (repeatable)")


def _cache_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", choices=CACHE_MODES,
                   help="the response cache for its reproducible requests")
    p.add_argument("--cache-ttl", type=int, metavar="SECONDS")
    p.add_argument("--cache-similarity", type=float, metavar="COSINE")


def _cache(args: argparse.Namespace) -> dict[str, Any]:
    """The `cache` field of a body, if any cache flag was given."""
    policy = {"mode": args.cache, "ttl_s": args.cache_ttl,
              "similarity": args.cache_similarity}
    if args.cache is None:
        return {}
    return {"cache": {k: v for k, v in policy.items() if v is not None}}


def _dollars_to_micros(value: str) -> int:
    return int(Decimal(value) * 1_000_000)


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="Create, list, update and revoke API keys.")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="Create a key; its secret is shown once.")
    create.add_argument("--tenant", required=True)
    create.add_argument("--tier", choices=TIERS)
    create.add_argument("--name")
    _limit_flags(create)
    _cache_flags(create)
    create.set_defaults(run=lambda a: _print(_call("POST", "/v1/admin/keys", {
        "tenant": a.tenant, **({"tier": a.tier} if a.tier else {}),
        **({"name": a.name} if a.name else {}), "limits": _limits(a),
        **({"budgets": _budgets(a)} if a.budget else {}), **_cache(a)})))
    lst = ksub.add_parser("list", help="List keys.")
    lst.add_argument("--tenant")
    lst.set_defaults(run=lambda a: _print(_call(
        "GET", "/v1/admin/keys" + (f"?tenant={a.tenant}" if a.tenant else ""))))
    get = ksub.add_parser("get", help="Show one key.")
    get.add_argument("key_id")
    get.set_defaults(run=lambda a: _print(_call("GET", f"/v1/admin/keys/{a.key_id}")))
    update = ksub.add_parser("update", help="Change a key's tier or limits.")
    update.add_argument("key_id")
    update.add_argument("--tier", choices=TIERS)
    _limit_flags(update)
    _cache_flags(update)
    update.set_defaults(run=lambda a: _print(_call("PATCH", f"/v1/admin/keys/{a.key_id}", {
        **({"tier": a.tier} if a.tier else {}),
        **({"limits": _limits(a)} if _limits(a) else {}),
        **({"budgets": _budgets(a)} if a.budget else {}), **_cache(a)})))
    revoke = ksub.add_parser("revoke", help="Revoke a key on every gateway.")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=lambda a: _print(_call("DELETE", f"/v1/admin/keys/{a.key_id}")))

    tenants = sub.add_parser("tenants", help="Create and list tenants.")
    tsub = tenants.add_subparsers(dest="tenants_command", required=True)
    tcreate = tsub.add_parser("create")
    tcreate.add_argument("tenant")
    tcreate.add_argument("--tier", choices=TIERS, default="free",
                         help="the tier its keys get unless they name one")
    tcreate.add_argument("--budget", type=_budget, action="append", metavar="BUDGET.LEVEL=N",
                         help="a quota or budget its new keys get (repeatable)")
    _cache_flags(tcreate)
    tcreate.set_defaults(run=lambda a: _print(_call("POST", "/v1/admin/tenants", {
        "tenant": a.tenant, "default_tier": a.tier, "budgets": _budgets(a), **_cache(a)})))
    tsub.add_parser("list").set_defaults(
        run=lambda a: _print(_call("GET", "/v1/admin/tenants")))

    prices = sub.add_parser("prices", help="Set and list model prices.")
    psub = prices.add_subparsers(dest="prices_command", required=True)
    pset = psub.add_parser("set", help="Set a model's price in dollars per million tokens.")
    pset.add_argument("model")
    pset.add_argument("--input", required=True, help="$ per million input tokens")
    pset.add_argument("--output", required=True, help="$ per million output tokens")
    pset.add_argument("--cached", help="$ per million cached input tokens")
    pset.add_argument("--cache-hit", help="$ per million tokens of a response-cache hit")
    pset.set_defaults(run=lambda a: _print(_call("PUT", f"/v1/admin/prices/{a.model}", {
        "input_micros_per_million": _dollars_to_micros(a.input),
        "output_micros_per_million": _dollars_to_micros(a.output),
        **({"cached_micros_per_million": _dollars_to_micros(a.cached)} if a.cached else {}),
        **({"cache_hit_micros_per_million": _dollars_to_micros(a.cache_hit)}
           if a.cache_hit else {}),
    })))
    psub.add_parser("list").set_defaults(
        run=lambda a: _print(_call("GET", "/v1/admin/prices")))

    ab = sub.add_parser("ab", help="Create, list, read and stop A/B tests.")
    asub = ab.add_subparsers(dest="ab_command", required=True)
    acreate = asub.add_parser("create")
    acreate.add_argument("--name", required=True)
    acreate.add_argument("--a", dest="model_a", required=True)
    acreate.add_argument("--b", dest="model_b", required=True)
    acreate.add_argument("--split", type=float, required=True, help="percent sent to B")
    acreate.set_defaults(run=lambda a: _print(_call("POST", "/v1/admin/ab-tests", {
        "name": a.name, "model_a": a.model_a, "model_b": a.model_b, "split": a.split})))
    asub.add_parser("list").set_defaults(
        run=lambda a: _print(_call("GET", "/v1/admin/ab-tests")))
    show = asub.add_parser("show")
    show.add_argument("experiment_id")
    show.set_defaults(run=lambda a: _print(_call("GET",
                                                 f"/v1/admin/ab-tests/{a.experiment_id}")))
    stop = asub.add_parser("stop")
    stop.add_argument("experiment_id")
    stop.set_defaults(run=lambda a: _print(_call(
        "POST", f"/v1/admin/ab-tests/{a.experiment_id}/stop")))
