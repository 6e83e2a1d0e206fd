"""The usage export as a stream of CSV or JSON, one block of rows at a time.

The whole answer is never held in memory: rows go out as ClickHouse returns them, and
the totals and the price versions are accumulated on the way and written at the end.

- JSON is one document: `{"object": "usage.export", "tenant", "period", "group_by",
  "data": [rows…], "totals": {…}, "price_versions": [{"model", "versions"}]}`.
- CSV has a header, the rows, and a last row whose first column is `total`. The period
  is in the `x-sluice-period-from` / `-to` headers and the file name.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from analytics.reports import EXPORT_MEASURES, Export, export_record
from analytics.warehouse import RowStream


class _Totals:
    def __init__(self) -> None:
        self.sums = dict.fromkeys(EXPORT_MEASURES, 0)
        self.versions: dict[str, set[int]] = {}
        self.rows = 0

    def add(self, record: dict[str, Any]) -> None:
        self.rows += 1
        for name in EXPORT_MEASURES:
            self.sums[name] += record[name]
        for model, versions in record["price_versions"].items():
            self.versions.setdefault(model, set()).update(versions)

    def price_versions(self) -> list[dict[str, Any]]:
        return [{"model": m, "versions": sorted(v)} for m, v in sorted(self.versions.items())]


def usd(micros: int) -> str:
    """Micro-dollars as an exact decimal string of dollars."""
    return f"{Decimal(micros).scaleb(-6):f}"


def filename(export: Export, extension: str) -> str:
    who = export.scope.tenant if export.scope.tenant is not None else "all-tenants"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in who)
    start = export.period.start.strftime("%Y%m%dT%H%M")
    end = export.period.end.strftime("%Y%m%dT%H%M")
    return f"sluice-usage-{safe}-{start}-{end}.{extension}"


async def as_json(export: Export, stream: RowStream) -> AsyncIterator[bytes]:
    totals = _Totals()
    head = {"object": "usage.export", "tenant": export.scope.tenant,
            "period": export.period.describe(), "group_by": list(export.dimensions)}
    try:
        yield (json.dumps(head)[:-1] + ', "data": [').encode()
        async for block in stream.blocks():
            lines = []
            for row in block:
                record = export_record(stream.columns, row)
                record["cost_usd"] = usd(record["cost_micros"])
                lines.append(("\n" if totals.rows == 0 else ",\n") + json.dumps(record))
                totals.add(record)
            yield "".join(lines).encode()
    finally:
        stream.close()
    tail = {"totals": {**totals.sums, "cost_usd": usd(totals.sums["cost_micros"]),
                       "rows": totals.rows},
            "price_versions": totals.price_versions()}
    yield ("\n], " + json.dumps(tail)[1:] + "\n").encode()


async def as_csv(export: Export, stream: RowStream) -> AsyncIterator[bytes]:
    totals = _Totals()
    columns = [*export.columns[:-1], "cost_usd", "price_versions"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def flush() -> bytes:
        data = buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        return data

    try:
        writer.writerow(columns)
        yield flush()
        async for block in stream.blocks():
            for row in block:
                record = export_record(stream.columns, row)
                totals.add(record)
                writer.writerow([*(record[c] for c in export.columns[:-1]),
                                 usd(record["cost_micros"]), _cell(record["price_versions"])])
            yield flush()
    finally:
        stream.close()
    dims = len(export.dimensions)
    writer.writerow(["total", *[""] * (dims - 1), *(totals.sums[m] for m in EXPORT_MEASURES),
                     usd(totals.sums["cost_micros"]),
                     _cell({p["model"]: p["versions"] for p in totals.price_versions()})])
    yield flush()


def _cell(versions: dict[str, list[int]]) -> str:
    return " ".join(f"{model}:{v}" for model, vs in sorted(versions.items()) for v in vs)
