-- One table per event stream, as the events arrive.
--
-- * Sorting key: tenant, then key, then time, then event id. Every report filters by
--   tenant (a non-admin caller can only ever see its own), most by key and a period.
-- * Event ids: ReplacingMergeTree collapses a row that was stored twice when parts merge.
--   The sink already never stores an event twice (see analytics/sink.py); this is the
--   backstop for raw-row queries.
-- * non_replicated_deduplication_window: ClickHouse remembers the insert tokens of the
--   last blocks, so the sink can retry a batch after a crash and nothing lands twice,
--   in these tables or in the rollups their materialized views feed.
-- * Absent strings (no tenant, no key) are '' rather than NULL: LowCardinality and
--   sorting keys work best without Nullable. Times are DateTime64(3, 'UTC').
-- * TTLs: raw requests and cache events are kept 180 and 90 days, usage 400 days (a year
--   over year), the ledger for ever (it is money). Rollups outlive the raw rows.

CREATE TABLE IF NOT EXISTS requests
(
    event_id          String,
    event_type        LowCardinality(String) COMMENT 'request_completed | request_rejected',
    ts                DateTime64(3, 'UTC'),
    request_id        String,
    tenant            LowCardinality(String),
    key_id            String,
    user              String,
    endpoint          LowCardinality(String),
    model             LowCardinality(String),
    variant           LowCardinality(String),
    experiment_id     LowCardinality(String),
    status            LowCardinality(String) COMMENT 'completed | rejected',
    status_code       UInt16,
    error_type        LowCardinality(String),
    error_code        LowCardinality(String),
    message           String,
    stream            Bool,
    finish_reason     LowCardinality(String),
    cache             LowCardinality(String) COMMENT 'hit | miss | bypass, empty when rejected',
    disconnected      Bool,
    prompt_tokens     UInt32,
    completion_tokens UInt32,
    ttft_ms           Nullable(Float32),
    latency_ms        Float32,
    INDEX ts_range ts TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, key_id, ts, event_id)
TTL toDateTime(ts) + INTERVAL 180 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS usage
(
    event_id          String,
    ts                DateTime64(3, 'UTC'),
    request_id        String,
    tenant            LowCardinality(String),
    key_id            String,
    user              String,
    model             LowCardinality(String),
    variant           LowCardinality(String),
    experiment_id     LowCardinality(String),
    worker_id         LowCardinality(String),
    status            LowCardinality(String) COMMENT 'completed | cancelled | failed | expired',
    finish_reason     LowCardinality(String),
    prompt_tokens     UInt32,
    completion_tokens UInt32,
    cached_tokens     UInt32,
    queue_ms          Float32,
    ttft_ms           Nullable(Float32),
    latency_ms        Float32,
    reserved_tokens   UInt32,
    INDEX ts_range ts TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, key_id, ts, event_id)
TTL toDateTime(ts) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS cache
(
    event_id          String,
    event_type        LowCardinality(String) COMMENT 'cache_hit | cache_stored | cache_evicted',
    ts                DateTime64(3, 'UTC'),
    request_id        String,
    cache_key         String,
    tenant            LowCardinality(String),
    key_id            String,
    model             LowCardinality(String),
    prompt_tokens     UInt32 COMMENT 'hits: prompt tokens not sent to a worker',
    completion_tokens UInt32 COMMENT 'hits: completion tokens not generated',
    size_bytes        UInt64,
    reason            LowCardinality(String) COMMENT 'evictions: expired | capacity',
    INDEX ts_range ts TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, key_id, ts, event_id)
TTL toDateTime(ts) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Priced usage. Its time is `occurred_at`, when the usage happened: a ledger entry made
-- again for the same usage (same `ledger:<usage id>` event id) sorts to the same place.
CREATE TABLE IF NOT EXISTS ledger
(
    event_id          String,
    ts                DateTime64(3, 'UTC'),
    occurred_at       DateTime64(3, 'UTC'),
    usage_event_id    String,
    request_id        String,
    tenant            LowCardinality(String),
    key_id            String,
    model             LowCardinality(String),
    variant           LowCardinality(String),
    experiment_id     LowCardinality(String),
    status            LowCardinality(String),
    prompt_tokens     UInt32,
    completion_tokens UInt32,
    cached_tokens     UInt32,
    price_version     Nullable(UInt32) COMMENT 'NULL when the model had no price yet',
    input_micros      Int64,
    output_micros     Int64,
    cached_micros     Int64,
    cost_micros       Int64 COMMENT 'integer micro-dollars',
    day               Date,
    INDEX occurred_range occurred_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant, key_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
