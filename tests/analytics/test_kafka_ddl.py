"""deploy/clickhouse/kafka_ingest.sql: its views turn events into the same rows the sink
stores.

chDB has no Kafka engine, so the queue tables are made with the Null engine here, fed
the events' JSON as Kafka would deliver it; the views and the tables they write are the
production ones.
"""

from __future__ import annotations

import re
import time

from analytics import landing, migrations
from analytics.warehouse import Warehouse
from tests.analytics.harness import unique
from tests.analytics.traffic import expected, store_queries, traffic
from tests.conftest import ROOT

DDL = ROOT / "deploy" / "clickhouse" / "kafka_ingest.sql"
COLUMNS = {"requests": "event_id, event_type, ts, tenant, key_id, endpoint, model, "
                       "status, status_code, error_type, cache, prompt_tokens, ttft_ms, latency_ms",
           "usage": "event_id, ts, tenant, key_id, model, status, prompt_tokens, cached_tokens, "
                    "ttft_ms, latency_ms",
           "ledger": "event_id, ts, occurred_at, tenant, key_id, model, price_version, "
                     "cost_micros, day",
           "cache": "event_id, event_type, ts, tenant, key_id, model, prompt_tokens"}


def _without_kafka(sql: str) -> list[str]:
    """The DDL's statements with Null queue tables and without the error side-channel."""
    sql = re.sub(r"ENGINE = Kafka\(.*?\)\s*SETTINGS input_format_skip_unknown_fields = 1",
                 "ENGINE = Null", sql, flags=re.S)
    sql = sql.replace("length(_error) = 0 AND ", "")
    statements = migrations.Migration(0, "kafka", sql).statements()
    return [s for s in statements if "_error AS error" not in s]


async def test_the_views_store_what_the_sink_stores(warehouse: Warehouse) -> None:
    start = time.time() - 600
    by_view = traffic(unique("kafka-ddl"), 30, start=start, spacing_s=5, price_version=None)
    by_sink = traffic(unique("sink-twin"), 30, start=start, spacing_s=5, price_version=None)
    with warehouse.writer() as client:
        for statement in _without_kafka(DDL.read_text()):
            client.command(statement)
        for topic in ("requests", "usage", "cache", "ledger"):
            lines = "\n".join(e.model_dump_json() for t, e in by_view.events
                              if t == f"sluice.{topic}")
            client.command(f"INSERT INTO kafka_{topic} SETTINGS "
                           f"input_format_skip_unknown_fields = 1 FORMAT JSONEachRow\n{lines}")
        landing.land(client, landing.blocks(by_sink.events))

    for name, sql in store_queries(by_view.tenant).items():
        assert tuple((await warehouse.query(sql)).rows[0]) == expected(by_view)[name], name
    # Row for row, the same as the sink's (but for ids and tenant names).
    for table, columns in COLUMNS.items():
        def rows(tenant: str, table: str = table, columns: str = columns) -> str:
            return (f"SELECT {columns.replace('event_id, ', '')} FROM {table} "
                    f"WHERE tenant = '{tenant}' ORDER BY ALL")
        view_rows = (await warehouse.query(rows(by_view.tenant))).rows
        sink_rows = (await warehouse.query(rows(by_sink.tenant))).rows
        strip = [tuple(v for v in r if v not in (by_view.tenant, by_sink.tenant))
                 for r in view_rows]
        assert strip == [tuple(v for v in r if v != by_sink.tenant) for r in sink_rows], table
