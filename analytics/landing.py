"""Writing events into their tables so that writing the same events again changes nothing.

Each table gets one insert per batch, with an `insert_deduplication_token` made from the
sorted ids of the events in it. ClickHouse remembers recent tokens per table
(`non_replicated_deduplication_window`, or natively on Replicated tables) and, with
`deduplicate_blocks_in_dependent_materialized_views`, per materialized view too. So an
insert repeated after a crash — whether the first attempt landed fully, partly (the raw
table but not a rollup) or not at all — leaves every table with the rows exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client

from analytics.rows import BY_TOPIC, Row, Table
from schemas.events import AnyEvent

INSERT_SETTINGS = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


def token(table: Table, event_ids: Iterable[str]) -> str:
    """The deduplication token of a block: the table and the set of its events."""
    digest = hashlib.sha256()
    for event_id in sorted(event_ids):
        digest.update(event_id.encode())
        digest.update(b"\n")
    return f"{table.name}:{digest.hexdigest()}"


@dataclass
class Blocks:
    """Rows per table for one batch, and the events that fit no table."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    misplaced: int = 0

    def add(self, topic: str, event: AnyEvent) -> None:
        table = BY_TOPIC.get(topic)
        row = table.row(event) if table is not None else None
        if table is None or row is None:
            self.misplaced += 1
            return
        self.rows.setdefault(table.topic, []).append(row)
        self.ids.setdefault(table.topic, []).append(event.event_id)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())


def blocks(events: Iterable[tuple[str, AnyEvent]]) -> Blocks:
    """Group (topic, event) pairs into per-table rows."""
    out = Blocks()
    for topic, event in events:
        out.add(topic, event)
    return out


def land(client: Client, batch: Blocks,
         landed: Callable[[str], None] | None = None) -> dict[str, int]:
    """Insert every table's rows of `batch`, idempotently; returns the rows per table.
    `landed(table)` is told as each table's insert completes."""
    written = {}
    for topic, rows in batch.rows.items():
        table = BY_TOPIC[topic]
        settings = {**INSERT_SETTINGS, "insert_deduplication_token": token(table, batch.ids[topic])}
        client.insert(table.name, rows, column_names=list(table.columns), settings=settings)
        written[table.name] = len(rows)
        if landed:
            landed(table.name)
    return written
