"""The definitions journal: what the embedded broker would forget on restart, on disk.

The embedded broker keeps its topics in memory. The definition topics (keys and
tenants, prices, A/B tests) are the only record of what an operator set up, so under
`sluice up` the admin API also appends each record it publishes there to a file in
`SLUICE_HOME`, flushed to disk before it answers; `sluice up` replays the file's newest
record per topic and key into the new broker before any other role starts. On a Kafka
cluster none of this runs: its compacted topics are the record.

A line is `<crc32 of the rest, 8 hex digits> <JSON: topic, key (base64), value>`. A line
cut short by a crash mid-write (the last one) is skipped with a warning; any other line
that does not check out is reported with its number and skipped, and the file is left as
it is: the stack still starts, with everything else in the file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from broker.clients import Broker
from schemas import topics

JOURNALED = frozenset({topics.KEYS, topics.PRICES, topics.EXPERIMENTS})


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes
    value: bytes


def _line(record: Record) -> bytes:
    payload = json.dumps({"topic": record.topic, "key": base64.b64encode(record.key).decode(),
                          "value": record.value.decode()}, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def _parse(line: bytes) -> Record:
    crc, _, payload = line.partition(b" ")
    if len(crc) != 8 or int(crc, 16) != zlib.crc32(payload):
        raise ValueError("checksum does not match")
    body = json.loads(payload)
    if body["topic"] not in JOURNALED:
        raise ValueError(f"not a journaled topic: {body['topic']!r}")
    return Record(body["topic"], base64.b64decode(body["key"], validate=True),
                  body["value"].encode())


class Journal:
    """Appends records to the journal file, each on disk before `append` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append_now(self, record: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            line = _line(record)
            if os.fstat(fd).st_size and not _ends_with_newline(self.path):
                line = b"\n" + line  # after a line cut short: never glued onto it
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def append(self, record: Record) -> None:
        await asyncio.to_thread(self.append_now, record)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


@dataclass
class Contents:
    records: list[Record]  # the newest per (topic, key), in the order last written
    lines: int
    problems: list[str]


def read(path: Path) -> Contents:
    """What the journal at `path` holds; a missing file holds nothing."""
    if not path.exists():
        return Contents([], 0, [])
    data = path.read_bytes()
    lines = data.split(b"\n")
    newest: dict[tuple[str, bytes], Record] = {}
    problems = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = _parse(line)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            last = number == len(lines)  # no newline after it: cut short mid-write
            problems.append(f"{path}: line {number} "
                            f"{'was cut short (a stop during a write)' if last else 'is corrupt'}"
                            f" and was skipped ({exc})")
            continue
        newest.pop((record.topic, record.key), None)
        newest[(record.topic, record.key)] = record
    return Contents(list(newest.values()), sum(1 for ln in lines if ln.strip()), problems)


def compact(path: Path, contents: Contents) -> None:
    """Rewrite a healthy journal with only its newest records (atomically). A journal
    with problems is left as it is, for a person to look at."""
    if contents.problems or contents.lines == len(contents.records):
        return
    write(path, contents.records)


def write(path: Path, records: list[Record]) -> None:
    """A journal of exactly `records`, replacing `path` atomically once on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_suffix(".compacting")
    with fresh.open("wb") as f:
        f.write(b"".join(_line(r) for r in records))
        f.flush()
        os.fsync(f.fileno())
    fresh.replace(path)


async def replay(broker: Broker, path: Path) -> Contents:
    """Publish the journal's newest records into `broker` (its topics made first) and
    compact the file; returns what was read, problems included."""
    contents = read(path)
    if not contents.records:
        return contents
    await broker.ensure()
    producer = broker.producer(acks="all")
    await producer.start()
    try:
        sent = [await producer.send(r.topic, r.value, key=r.key) for r in contents.records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    compact(path, contents)
    return contents
