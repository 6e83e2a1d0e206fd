"""The layering rules: `schemas` is the contract and the services never import each other."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "inference", "streams", "analytics")
FIRST_PARTY = (*SERVICES, "schemas", "deploy")


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
def test_services_import_only_schemas(package: str) -> None:
    wrong = {(f, m) for f, m in _imports(package)
             if m in FIRST_PARTY and m not in (package, "schemas")}
    assert wrong == set()


def test_schemas_depend_on_pydantic_and_stdlib_only() -> None:
    allowed = {"pydantic", "schemas", "__future__"}
    # The exceptions, both about reading and writing the topics themselves: topics.py
    # creates the topics it lays out (`topics.ensure`), and tansu.py makes every consumer
    # read them whole on the embedded broker.
    kafka = {("schemas/topics.py", "aiokafka"), ("schemas/tansu.py", "aiokafka")}
    wrong = {(f, m) for f, m in _imports("schemas")
             if m not in allowed and m not in sys.stdlib_module_names and (f, m) not in kafka}
    assert wrong == set()


@pytest.mark.parametrize("package", [*FIRST_PARTY])
def test_packages_import(package: str) -> None:
    importlib.import_module(package)
