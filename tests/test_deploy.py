"""The Compose file and Kubernetes manifests name real commands and real settings.

No container engine runs here, so these checks are what keeps the manifests honest: every
container runs a `sluice` command the CLI accepts, and every `SLUICE_*` variable they set
is a setting some service reads (a typo would otherwise be ignored silently). The admin
commands take every limit and budget a key has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from analytics.settings import Settings as AnalyticsSettings
from deploy import admin_cli
from deploy.cli import parser
from deploy.settings import Settings as DeploySettings
from gateway.settings import Settings as GatewaySettings
from inference.settings import Settings as WorkerSettings
from schemas.tiers import (
    BUDGET_LEVELS,
    BUDGET_NAMES,
    LIMIT_NAMES,
    Budget,
    Budgets,
    CachePolicy,
    Limits,
)
from streams.settings import Settings as StreamsSettings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KNOWN = {f"SLUICE_{name.upper()}" for cls in (AnalyticsSettings, DeploySettings,
                                               GatewaySettings, WorkerSettings,
                                               StreamsSettings)
         for name in cls.model_fields}
ROLES = {"gateway", "streams", "analytics", "worker"}


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def _k8s() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "sluice.yaml").read_text()) if d]


def _containers() -> Iterator[tuple[str, list[str], dict[str, Any]]]:
    """(where, args, env) for every Sluice container in both files."""
    for name, service in _compose()["services"].items():
        if service.get("image", "").startswith("sluice"):
            yield f"compose:{name}", service["command"], service["environment"]
    config = {}
    for doc in _k8s():
        if doc["kind"] in ("ConfigMap", "Secret"):
            config.update(doc.get("data") or doc.get("stringData") or {})
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                env = {**config, **{e["name"]: e.get("value") for e in c.get("env", [])}}
                yield f"k8s:{doc['metadata']['name']}", c["args"], env


def test_every_role_is_deployed_both_ways() -> None:
    compose = {args[0] for where, args, _ in _containers() if where.startswith("compose")}
    k8s = {args[0] for where, args, _ in _containers() if where.startswith("k8s")}
    assert compose == k8s == ROLES


@pytest.mark.parametrize(("where", "args", "env"), list(_containers()),
                         ids=[c[0] for c in _containers()])
def test_commands_and_settings_are_real(where: str, args: list[str], env: dict[str, Any]
                                        ) -> None:
    parser().parse_args(args)
    unknown = {name for name in env if name not in KNOWN}
    assert unknown == set(), f"{where} sets variables no service reads"
    assert env["SLUICE_KAFKA_BOOTSTRAP"], "every role needs the cluster"


def test_gateways_get_their_own_reply_topics_and_the_shared_secrets() -> None:
    for _, args, env in _containers():
        if args[0] == "gateway":
            assert env.get("SLUICE_ADMIN_KEY") and env.get("SLUICE_INTERNAL_TOKEN")
            assert env.get("SLUICE_STREAMS_URL") and env.get("SLUICE_ANALYTICS_URL")
    k8s_gateway = next(d for d in _k8s() if d["metadata"]["name"] == "sluice-gateway")
    env = k8s_gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    assert any(e["name"] == "SLUICE_GATEWAY_ID" and "fieldRef" in e["valueFrom"] for e in env)


def test_key_flags_cover_every_limit_and_budget() -> None:
    flags = [f"--{name.replace('_', '-')}" for name in LIMIT_NAMES]
    budgets = [f"{name}.{level}=7" for name in BUDGET_NAMES for level in BUDGET_LEVELS]
    args = parser().parse_args(["keys", "create", "--tenant", "t",
                                *(arg for flag in flags for arg in (flag, "7")),
                                *(arg for b in budgets for arg in ("--budget", b))])
    assert Limits.model_validate(admin_cli._limits(args)) == Limits(
        **dict.fromkeys(LIMIT_NAMES, 7))
    assert Budgets.model_validate(admin_cli._budgets(args)) == Budgets(
        **dict.fromkeys(BUDGET_NAMES, Budget(soft=7, hard=7)))


def test_cache_flags_make_a_valid_policy() -> None:
    args = parser().parse_args(["keys", "create", "--tenant", "t", "--cache", "semantic",
                                "--cache-ttl", "60", "--cache-similarity", "0.9"])
    assert CachePolicy.model_validate(admin_cli._cache(args)["cache"]) == CachePolicy(
        mode="semantic", ttl_s=60, similarity=0.9)
    assert admin_cli._cache(parser().parse_args(["keys", "create", "--tenant", "t"])) == {}
