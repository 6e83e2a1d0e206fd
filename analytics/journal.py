"""The sink's batch journal (migrations/0003_sink_journal.sql).

A batch is journaled before it is inserted: the offset span it covers on each partition
and the events it dropped as duplicates. If its offsets were never committed, the journal
lets the next owner of those partitions rebuild exactly the same batch. The same events
give the same insert tokens, so inserting it again is harmless whether or not, or how
far, the first attempt got.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

TABLE = "sink_batches"


@dataclass(frozen=True)
class Span:
    """The offsets one batch took from one partition, both ends included."""

    topic: str
    partition: int
    first: int
    last: int
    first_event_id: str

    @property
    def start(self) -> str:
        return start(self.topic, self.partition, self.first)


def start(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


@dataclass(frozen=True)
class Entry:
    spans: tuple[Span, ...]
    skipped: frozenset[str] = frozenset()
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def record(client: Client, group: str, entry: Entry) -> None:
    """Journal a batch; call it before inserting the batch."""
    client.insert(TABLE, [[
        group, entry.batch_id, datetime.now(UTC), [s.start for s in entry.spans],
        [(s.topic, s.partition, s.first, s.last, s.first_event_id) for s in entry.spans],
        sorted(entry.skipped),
    ]], column_names=["consumer_group", "batch_id", "created_at", "starts", "ranges", "skipped"])


def starting_at(client: Client, group: str, starts: list[str]) -> list[Entry]:
    """Journaled batches that begin at one of `starts` (a partition's committed offset):
    batches whose offsets were never committed."""
    if not starts:
        return []
    rows = client.query(
        f"SELECT batch_id, ranges, skipped FROM {TABLE} "
        "WHERE consumer_group = {group:String} AND hasAny(starts, {starts:Array(String)}) "
        "ORDER BY created_at",
        parameters={"group": group, "starts": starts},
    ).result_rows
    entries = {}
    for batch_id, ranges, skipped in rows:
        # Named tuples come back as dicts.
        spans = tuple(Span(str(r["topic"]), int(r["partition"]), int(r["first"]), int(r["last"]),
                           str(r["first_event_id"])) for r in ranges)
        entries[batch_id] = Entry(spans, frozenset(skipped), batch_id)
    return list(entries.values())
