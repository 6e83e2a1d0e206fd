"""The JSON Schemas published in docs/ are the ones the models generate."""

from __future__ import annotations

from pathlib import Path

from schemas import export


def test_published_schemas_are_up_to_date() -> None:
    assert export.stale() == [], "docs/*.schema.json are stale: run `python -m schemas.export`"


def test_a_stale_schema_is_noticed(tmp_path: Path) -> None:
    export.write(tmp_path)
    assert export.stale(tmp_path) == []
    path = tmp_path / "ledger.schema.json"
    path.write_text(path.read_text().replace('"cost_micros"', '"cost"', 1))
    assert export.stale(tmp_path) == [path]
