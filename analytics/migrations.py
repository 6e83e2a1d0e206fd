"""Versioned SQL migrations, applied at start and recorded in `schema_migrations`.

Each file in `analytics/migrations/` is `NNNN_name.sql`: statements separated by `;` at
the end of a line. Every statement is idempotent (`IF NOT EXISTS`), so a migration cut
short by a crash is simply applied again; only a migration that finished is recorded. A
recorded migration whose file has since changed is an error: ship a new one instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clickhouse_connect.driver.client import Client

from analytics.exceptions import MigrationFailed

TABLE = "schema_migrations"
FOLDER = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_COMMENT = re.compile(r"--[^\n]*")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        # Comments go first: they may contain ';'. No statement here has '--' in a string.
        text = _COMMENT.sub("", self.sql)
        return [s.strip() for s in re.split(r";\s*(?:\n|$)", text) if s.strip()]


def available() -> list[Migration]:
    """Every migration shipped with the package, oldest first."""
    found = []
    for entry in FOLDER.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def applied(client: Client) -> dict[int, str]:
    """Version → checksum of the migrations recorded in this database."""
    _ensure_table(client)
    rows = client.query(f"SELECT version, argMax(checksum, applied_at) FROM {TABLE} "
                        "GROUP BY version").result_rows
    return {int(v): str(c) for v, c in rows}


def migrate(client: Client) -> list[Migration]:
    """Apply the migrations not recorded yet, in order; returns those it applied."""
    done = applied(client)
    ran = []
    for migration in available():
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise MigrationFailed(
                    f"migration {migration.version:04d}_{migration.name} was changed after it "
                    "was applied; add a new migration instead")
            continue
        for statement in migration.statements():
            try:
                client.command(statement)
            except Exception as exc:
                raise MigrationFailed(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}") from exc
        client.insert(TABLE, [[migration.version, migration.name, migration.checksum,
                               datetime.now(UTC)]],
                      column_names=["version", "name", "checksum", "applied_at"])
        ran.append(migration)
    return ran


def _ensure_table(client: Client) -> None:
    # Replacing by version: two processes migrating at once record a version once.
    client.command(f"""
        CREATE TABLE IF NOT EXISTS {TABLE}
        (
            version    UInt32,
            name       String,
            checksum   String,
            applied_at DateTime64(3, 'UTC')
        )
        ENGINE = ReplacingMergeTree(applied_at)
        ORDER BY version""")
