-- The sink's batch journal. Before a batch is inserted, the sink records which offsets it
-- covers and which events it dropped as duplicates. If the sink dies before it commits
-- those offsets, the next owner of the partitions rebuilds exactly that batch and inserts
-- it again with the same deduplication tokens, so ClickHouse keeps it once. A batch is
-- found by `starts` ('topic:partition:first offset'), matched against committed offsets.

CREATE TABLE IF NOT EXISTS sink_batches
(
    consumer_group LowCardinality(String),
    batch_id       String,
    created_at     DateTime64(3, 'UTC'),
    starts         Array(String),
    ranges         Array(Tuple(topic String, partition UInt32, first UInt64, last UInt64,
                               first_event_id String)),
    skipped        Array(String)
)
ENGINE = MergeTree
ORDER BY (consumer_group, created_at)
TTL toDateTime(created_at) + INTERVAL 30 DAY;
