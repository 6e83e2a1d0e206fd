"""Migrations: applied once, recorded, idempotent, and the tables they make fit the queries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from analytics import migrations
from analytics.exceptions import MigrationFailed
from analytics.warehouse import Warehouse


def test_applying_again_changes_nothing_and_every_version_is_recorded(
        warehouse: Warehouse) -> None:
    shipped = migrations.available()
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    with warehouse.writer() as client:
        assert migrations.migrate(client) == []
        assert migrations.migrate(client) == []
        recorded = migrations.applied(client)
        rows = client.query("SELECT version, count() FROM schema_migrations FINAL "
                            "GROUP BY version").result_rows
    assert recorded == {m.version: m.checksum for m in shipped}
    assert all(n == 1 for _, n in rows)


def test_every_statement_is_idempotent(warehouse: Warehouse) -> None:
    """A migration cut short by a crash is applied again from its first statement, over
    the migrations before it (each in a scratch database: a later one may have changed
    the tables an earlier one's statements write)."""
    shipped = migrations.available()
    with warehouse.writer() as client:
        home = client.query("SELECT currentDatabase()").result_rows[0][0]
        for n, migration in enumerate(shipped, 1):
            scratch = f"migrations_{n}_{uuid.uuid4().hex[:8]}"
            client.command(f"CREATE DATABASE {scratch}")
            try:
                client.command(f"USE {scratch}")
                for earlier in shipped[:n]:
                    for statement in earlier.statements():
                        client.command(statement)
                for statement in migration.statements():
                    client.command(statement)
            finally:
                client.command(f"USE `{home}`")
                client.command(f"DROP DATABASE {scratch} SYNC")


def test_a_migration_changed_after_it_was_applied_is_refused(warehouse: Warehouse) -> None:
    first = migrations.available()[0]
    with warehouse.writer() as client:
        def record(checksum: str) -> None:
            client.insert(migrations.TABLE, [[first.version, first.name, checksum,
                                              datetime.now(UTC)]],
                          column_names=["version", "name", "checksum", "applied_at"])
        record("0" * 64)
        try:
            with pytest.raises(MigrationFailed, match="changed after it was applied"):
                migrations.migrate(client)
        finally:
            record(first.checksum)
        assert migrations.migrate(client) == []


def test_stream_tables_fit_the_common_queries(warehouse: Warehouse) -> None:
    with warehouse.writer() as client:
        tables = {name: (engine, sorting, partition, ttl) for name, engine, sorting, partition, ttl
                  in client.query(
                      "SELECT name, engine, sorting_key, partition_key, "
                      "position(create_table_query, ' TTL ') > 0 FROM system.tables "
                      "WHERE database = currentDatabase()").result_rows}
        types = {(t, c): ty for t, c, ty in client.query(
            "SELECT table, name, type FROM system.columns "
            "WHERE database = currentDatabase()").result_rows}
    for name in ("requests", "usage", "cache"):
        assert tables[name][:3] == ("ReplacingMergeTree", "tenant, key_id, ts, event_id",
                                    "toYYYYMM(ts)")
        assert tables[name][3], f"{name} has a TTL"
        assert types[(name, "ts")] == "DateTime64(3, 'UTC')"
    assert tables["ledger"][:3] == ("ReplacingMergeTree", "tenant, key_id, occurred_at, event_id",
                                    "toYYYYMM(occurred_at)")
    assert not tables["ledger"][3], "the ledger is money: kept for ever"
    assert types[("ledger", "cost_micros")] == "Int64"
    for table, column in [("requests", "tenant"), ("requests", "model"), ("requests", "status"),
                          ("usage", "tenant"), ("usage", "model"), ("usage", "status"),
                          ("ledger", "tenant"), ("ledger", "model"), ("ledger", "status")]:
        assert types[(table, column)] == "LowCardinality(String)"
    for rollup in ("rollup_minute", "rollup_hour", "rollup_tenant_hour"):
        assert tables[rollup][:3] == ("AggregatingMergeTree", "tenant, key_id, bucket, model",
                                      "toYYYYMM(bucket)")
        assert types[(rollup, "latency_state")].startswith("AggregateFunction(quantilesTDigest")
    views = {n for n, (engine, *_) in tables.items() if engine == "MaterializedView"}
    assert {"rollup_minute_requests", "rollup_minute_usage", "rollup_minute_ledger",
            "rollup_minute_cache", "rollup_hour_from_minute",
            "rollup_tenant_hour_from_hour"} <= views
