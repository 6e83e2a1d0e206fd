"""Validate responses against OpenAI's published schemas (vendored, trimmed: schemas.json).

The spec is OpenAPI 3.1 but still marks some fields `nullable: true`; that is read here
as "or null".
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema


def _nullable(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@cache
def _components() -> dict[str, Any]:
    spec = json.loads((Path(__file__).parent / "schemas.json").read_text())
    return _nullable(spec["components"])  # type: ignore[no-any-return]


def validate(schema: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless `instance` is a valid `schema`."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": _components()}
    jsonschema.Draft202012Validator(root).validate(instance)
