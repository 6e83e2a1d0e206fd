"""`make bench-restart`: how long the embedded stack takes to get its state back.

A restart of `sluice up` on the embedded broker puts back two things before it is ready
(issue 17): the definitions journal (keys, tenants, prices, A/B tests) onto the new
broker, and each key's and tenant's day and month totals from the ledger in ClickHouse.
This bench gives it `--rows` usage events behind it (default 1 million, over 90 days,
made by `sluice analytics seed`, each with its ledger entry) and `--keys` keys in the
journal, then times, as `sluice up` runs them, on a new broker:

1. the journal's replay onto the broker;
2. `sluice analytics` from its start to `/ready` (migrated, the sink consuming);
3. `sluice streams` from its start to `/ready`, which now includes reading back what the
   ledger billed per key and day since the previous month began.

The model engines start as they always do (tens of seconds each here) whatever the
history; they are left out. Numbers go to docs/benchmarks.md. Run:
`python -m bench.restart [--rows N] [--keys N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect

from analytics import seed
from bench.common import broker, cpu, free_port, sluice, wait_http
from bench.report import write_section
from broker import PROFILES, Broker, journal
from schemas import topics
from schemas.events import KeyState
from schemas.tiers import Budgets

TARGET_READY_S = 60.0


def _journal(path: Path, keys: int) -> None:
    now = time.time()
    journal.write(path, [journal.Record(topics.KEYS, f"bench-{i:07d}".encode(), KeyState(
        key_id=f"bench-{i:07d}", tenant=f"tenant-{1 + i % 50:03d}",
        secret_hash=secrets.token_hex(32), tier="pro", budgets=Budgets(),
        created_at=now).encode()) for i in range(keys)])


def measure(rows: int, keys: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="sluice-bench-restart-"))
    dsn = f"chdb://{home / 'clickhouse'}"
    started = time.monotonic()
    client = clickhouse_connect.get_client(dsn=dsn)
    seed.seed(client, rows)
    ledger = client.query("SELECT count() FROM ledger").result_rows[0][0]
    client.close()
    out: dict[str, float] = {"seed_s": time.monotonic() - started, "ledger_rows": ledger}
    path = home / "journal" / "definitions.jsonl"
    _journal(path, keys)
    with broker("restart-broker") as bootstrap:
        t = time.monotonic()
        contents = asyncio.run(journal.replay(Broker(bootstrap, PROFILES["tansu"]), path))
        out["journal_s"] = time.monotonic() - t
        out["journal_records"] = len(contents.records)
        token = secrets.token_urlsafe(16)
        a_port, s_port = free_port(), free_port()
        env = {"SLUICE_HOME": str(home), "SLUICE_KAFKA_BOOTSTRAP": bootstrap,
               "SLUICE_CLICKHOUSE_URL": dsn, "SLUICE_INTERNAL_TOKEN": token}
        t = time.monotonic()
        analytics = sluice("restart-analytics", ["analytics", "--port", str(a_port)], env)
        try:
            wait_http(f"http://127.0.0.1:{a_port}/ready", analytics)
            out["analytics_s"] = time.monotonic() - t
            t = time.monotonic()
            streams = sluice("restart-streams", ["streams"], {
                **env, "SLUICE_STREAMS_PORT": str(s_port),
                "SLUICE_RESTORE_FROM": f"http://127.0.0.1:{a_port}"})
            try:
                wait_http(f"http://127.0.0.1:{s_port}/ready", streams, analytics)
                out["streams_s"] = time.monotonic() - t
                log = streams.log.name
            finally:
                streams.stop()
        finally:
            analytics.stop()
    restored = [ln for ln in Path(log).read_text().splitlines() if "restored the day" in ln]
    out["restored"] = restored[-1].split("restored the day and month totals of ")[-1] \
        if restored else "nothing"  # type: ignore[assignment]
    return out


def render(r: dict[str, float], rows: int, keys: int) -> str:
    ready = r["journal_s"] + r["analytics_s"] + r["streams_s"]
    verdict = "met" if ready <= TARGET_READY_S else "**not met**"
    return "\n".join([
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {cpu()}, {os.cpu_count()} cores. "
        f"{rows:,} usage events over 90 days behind it (`sluice analytics seed`: "
        f"{int(r['ledger_rows']):,} ledger entries; seeding took {r['seed_s']:.0f} s), "
        f"{keys:,} keys in the definitions journal; a new embedded broker.",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| the journal's {int(r['journal_records']):,} definitions onto the broker | "
        f"{r['journal_s']:.2f} |",
        f"| `sluice analytics`: start → `/ready` (migrated, sink consuming) | "
        f"{r['analytics_s']:.2f} |",
        f"| `sluice streams`: start → `/ready` (totals read back from the ledger) | "
        f"{r['streams_s']:.2f} |",
        f"| together | {ready:.2f} |",
        "",
        f"- Restored: {r['restored']}.",
        f"- To ready with the state back: {ready:.1f} s (target ≤ {TARGET_READY_S:g} s: "
        f"{verdict}); the model engines start as they do without any history.",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--keys", type=int, default=10_000)
    a = p.parse_args()
    result = measure(a.rows, a.keys)
    print(json.dumps(result, indent=1))
    text = render(result, a.rows, a.keys)
    write_section("restart", "A restart of the embedded stack", text)
    print(text)


if __name__ == "__main__":
    main()
