"""The definitions journal (`broker.journal`): what it keeps, what it does with a line cut
short or corrupt, and its replay onto the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker import journal
from broker.journal import Journal, Record
from schemas import topics
from schemas.events import AnyEvent, PriceSchedule, PriceVersion
from tests.conftest import broker_at
from tests.events import read_events


def _records() -> list[Record]:
    return [Record(topics.KEYS, b"tenant:acme", b'{"v":1}'),
            Record(topics.PRICES, b"model-x", b'{"p":1}'),
            Record(topics.KEYS, b"tenant:acme", b'{"v":2}'),
            Record(topics.EXPERIMENTS, b"ab_1", b'{"e":1}')]


def _written(path: Path) -> Journal:
    j = Journal(path)
    for record in _records():
        j.append_now(record)
    return j


def test_the_newest_record_per_topic_and_key_in_the_order_last_written(tmp_path: Path) -> None:
    path = tmp_path / "j" / "definitions.jsonl"
    _written(path)
    contents = journal.read(path)
    assert contents.problems == [] and contents.lines == 4
    assert contents.records == [Record(topics.PRICES, b"model-x", b'{"p":1}'),
                                Record(topics.KEYS, b"tenant:acme", b'{"v":2}'),
                                Record(topics.EXPERIMENTS, b"ab_1", b'{"e":1}')]


def test_a_missing_journal_holds_nothing(tmp_path: Path) -> None:
    assert journal.read(tmp_path / "none.jsonl") == journal.Contents([], 0, [])


def test_a_last_line_cut_short_is_skipped_and_the_next_starts_a_line(tmp_path: Path) -> None:
    path = tmp_path / "definitions.jsonl"
    j = _written(path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-15])  # a stop in the middle of writing the last record
    contents = journal.read(path)
    assert len(contents.records) == 2
    assert len(contents.problems) == 1 and "line 4 was cut short" in contents.problems[0]
    j.append_now(Record(topics.KEYS, b"k2", b'{"k":2}'))
    after = journal.read(path)
    assert Record(topics.KEYS, b"k2", b'{"k":2}') in after.records
    assert len(after.problems) == 1 and "line 4 is corrupt" in after.problems[0]


def test_a_corrupt_line_is_reported_skipped_and_the_file_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "definitions.jsonl"
    _written(path)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'\\"p\\"', b'\\"q\\"')  # its checksum no longer matches
    lines.insert(2, b"not a record at all")
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    contents = journal.read(path)
    assert [p.split(": ", 1)[1][:17] for p in contents.problems] == ["line 2 is corrupt",
                                                                     "line 3 is corrupt"]
    assert [r.key for r in contents.records] == [b"tenant:acme", b"ab_1"]
    journal.compact(path, contents)
    assert path.read_bytes() == damaged


def test_a_healthy_journal_is_compacted_to_its_newest_records(tmp_path: Path) -> None:
    path = tmp_path / "definitions.jsonl"
    _written(path)
    journal.compact(path, journal.read(path))
    contents = journal.read(path)
    assert contents.lines == 3 and contents.problems == []
    assert [r.value for r in contents.records] == [b'{"p":1}', b'{"v":2}', b'{"e":1}']


def test_replay_puts_the_newest_records_on_the_broker(bootstrap: str, tmp_path: Path) -> None:
    model = f"journal-{tmp_path.name}"
    path = tmp_path / "definitions.jsonl"
    for cents in (1, 2):  # two versions of one schedule: only the newer goes back
        schedule = PriceSchedule(model=model, versions=(PriceVersion(
            version=cents, effective_from=0, input_micros_per_million=cents,
            output_micros_per_million=cents, cached_micros_per_million=cents),))
        Journal(path).append_now(Record(topics.PRICES, model.encode(), schedule.encode()))
    contents = asyncio.run(journal.replay(broker_at(bootstrap), path))
    assert len(contents.records) == 1 and contents.problems == []
    assert journal.read(path).lines == 1  # compacted

    def mine(events: list[AnyEvent]) -> list[PriceSchedule]:
        return [e for e in events if isinstance(e, PriceSchedule) and e.model == model]

    found = mine(read_events(bootstrap, topics.PRICES, lambda ev: bool(mine(ev)), 15))
    assert [s.versions[0].version for s in found] == [2]
