"""The layering rules: `schemas` is the contract, `broker` the one way to Kafka, and the
services never import each other."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "inference", "streams", "analytics")
FIRST_PARTY = (*SERVICES, "schemas", "broker", "deploy")


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", SERVICES)
def test_services_import_only_schemas_and_broker(package: str) -> None:
    wrong = {(f, m) for f, m in _imports(package)
             if m in FIRST_PARTY and m not in (package, "schemas", "broker")}
    assert wrong == set()


def test_broker_imports_only_schemas() -> None:
    wrong = {(f, m) for f, m in _imports("broker")
             if m in FIRST_PARTY and m not in ("broker", "schemas")}
    assert wrong == set()


@pytest.mark.parametrize("package", SERVICES)
def test_only_the_broker_makes_kafka_clients(package: str) -> None:
    """Services get their producers, consumers and topics from `broker.Broker`."""
    made = {(str(path.relative_to(ROOT)), name)
            for path in (ROOT / package).rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
            and (name := getattr(node.func, "id", getattr(node.func, "attr", "")))
            in ("AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient")}
    assert made == set()


def test_schemas_depend_on_pydantic_and_stdlib_only() -> None:
    allowed = {"pydantic", "schemas", "__future__"}
    wrong = {(f, m) for f, m in _imports("schemas")
             if m not in allowed and m not in sys.stdlib_module_names}
    assert wrong == set()


@pytest.mark.parametrize("package", [*FIRST_PARTY])
def test_packages_import(package: str) -> None:
    importlib.import_module(package)


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "bench").glob("*.py")
                                          if p.stem != "__init__"))
def test_benchmarks_import(module: str) -> None:
    """Benchmarks run outside the suite; a rename they missed shows here."""
    importlib.import_module(f"bench.{module}")
