-- Sluice: ClickHouse reads the event topics itself (Kafka engine + materialized views).
--
-- The production alternative to the `sluice analytics` sink for large deployments; see
-- README.md beside this file. Apply it after the analytics migrations
-- (analytics/migrations/*.sql), which create the tables and rollups these views write to:
-- rows land in the same `requests`, `usage`, `cache` and `ledger` tables, so the rollup
-- views fire exactly as they do for the sink, and the reporting API reads them the same.
--
-- Connection details live in a named collection, made once by an administrator:
--
--   CREATE NAMED COLLECTION sluice_kafka AS
--       kafka_broker_list = 'kafka-1:9092,kafka-2:9092',
--       kafka_group_name = 'sluice-clickhouse',
--       kafka_format = 'JSONEachRow';
--
-- Each queue table reads one topic. Events are JSON objects whose fields depend on their
-- `event_type`; a queue table names every field its topic can carry (absent ones are
-- NULL), and skips fields it does not know, so a newer producer does not stop ingestion.

CREATE TABLE IF NOT EXISTS kafka_requests
(
    event_id          String,
    event_type        String,
    ts                Float64,
    request_id        String,
    endpoint          String,
    model             Nullable(String),
    key_id            Nullable(String),
    tenant            Nullable(String),
    user              Nullable(String),
    variant           Nullable(String),
    experiment_id     Nullable(String),
    status_code       UInt16,
    stream            Nullable(Bool),
    finish_reason     Nullable(String),
    prompt_tokens     Nullable(UInt32),
    completion_tokens Nullable(UInt32),
    ttft_ms           Nullable(Float64),
    latency_ms        Float64,
    disconnected      Nullable(Bool),
    cache             Nullable(String),
    error_type        Nullable(String),
    error_code        Nullable(String),
    message           Nullable(String)
)
ENGINE = Kafka(sluice_kafka, kafka_topic_list = 'sluice.requests', kafka_num_consumers = 1,
               kafka_skip_broken_messages = 1000, kafka_handle_error_mode = 'stream')
SETTINGS input_format_skip_unknown_fields = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_requests_to_requests TO requests AS
SELECT
    event_id, event_type, toDateTime64(ts, 3, 'UTC') AS ts, request_id,
    ifNull(tenant, '') AS tenant, ifNull(key_id, '') AS key_id, ifNull(user, '') AS user,
    endpoint, ifNull(model, '') AS model, ifNull(variant, '') AS variant,
    ifNull(experiment_id, '') AS experiment_id,
    if(event_type = 'request_rejected', 'rejected', 'completed') AS status, status_code,
    ifNull(error_type, '') AS error_type, ifNull(error_code, '') AS error_code,
    ifNull(message, '') AS message, ifNull(stream, false) AS stream,
    ifNull(finish_reason, '') AS finish_reason,
    if(event_type = 'request_rejected', '', ifNull(cache, 'bypass')) AS cache,
    ifNull(disconnected, false) AS disconnected,
    ifNull(prompt_tokens, 0) AS prompt_tokens, ifNull(completion_tokens, 0) AS completion_tokens,
    toNullable(toFloat32(ttft_ms)) AS ttft_ms, toFloat32(latency_ms) AS latency_ms
FROM kafka_requests
WHERE length(_error) = 0 AND event_type IN ('request_completed', 'request_rejected');

CREATE TABLE IF NOT EXISTS kafka_usage
(
    event_id          String,
    event_type        String,
    ts                Float64,
    request_id        String,
    model             String,
    key_id            Nullable(String),
    tenant            Nullable(String),
    user              Nullable(String),
    variant           Nullable(String),
    experiment_id     Nullable(String),
    worker_id         String,
    status            String,
    finish_reason     Nullable(String),
    prompt_tokens     UInt32,
    completion_tokens UInt32,
    cached_tokens     Nullable(UInt32),
    queue_ms          Nullable(Float64),
    ttft_ms           Nullable(Float64),
    latency_ms        Nullable(Float64),
    reserved_tokens   Nullable(UInt32)
)
ENGINE = Kafka(sluice_kafka, kafka_topic_list = 'sluice.usage', kafka_num_consumers = 1,
               kafka_skip_broken_messages = 1000, kafka_handle_error_mode = 'stream')
SETTINGS input_format_skip_unknown_fields = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_usage_to_usage TO usage AS
SELECT
    event_id, toDateTime64(ts, 3, 'UTC') AS ts, request_id, ifNull(tenant, '') AS tenant,
    ifNull(key_id, '') AS key_id, ifNull(user, '') AS user, model,
    ifNull(variant, '') AS variant, ifNull(experiment_id, '') AS experiment_id, worker_id,
    status, ifNull(finish_reason, '') AS finish_reason, prompt_tokens, completion_tokens,
    ifNull(cached_tokens, 0) AS cached_tokens, toFloat32(ifNull(queue_ms, 0)) AS queue_ms,
    toNullable(toFloat32(ttft_ms)) AS ttft_ms, toFloat32(ifNull(latency_ms, 0)) AS latency_ms,
    ifNull(reserved_tokens, 0) AS reserved_tokens
FROM kafka_usage
WHERE length(_error) = 0 AND event_type = 'usage_recorded';

CREATE TABLE IF NOT EXISTS kafka_cache
(
    event_id          String,
    event_type        String,
    ts                Float64,
    request_id        Nullable(String),
    cache_key         String,
    key_id            Nullable(String),
    tenant            Nullable(String),
    model             String,
    prompt_tokens     Nullable(UInt32),
    completion_tokens Nullable(UInt32),
    size_bytes        Nullable(UInt64),
    reason            Nullable(String)
)
ENGINE = Kafka(sluice_kafka, kafka_topic_list = 'sluice.cache', kafka_num_consumers = 1,
               kafka_skip_broken_messages = 1000, kafka_handle_error_mode = 'stream')
SETTINGS input_format_skip_unknown_fields = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_cache_to_cache TO cache AS
SELECT
    event_id, event_type, toDateTime64(ts, 3, 'UTC') AS ts, ifNull(request_id, '') AS request_id,
    cache_key, ifNull(tenant, '') AS tenant, ifNull(key_id, '') AS key_id, model,
    if(event_type = 'cache_hit', ifNull(prompt_tokens, 0), 0) AS prompt_tokens,
    if(event_type = 'cache_hit', ifNull(completion_tokens, 0), 0) AS completion_tokens,
    ifNull(size_bytes, 0) AS size_bytes, ifNull(reason, '') AS reason
FROM kafka_cache
WHERE length(_error) = 0 AND event_type IN ('cache_hit', 'cache_stored', 'cache_evicted');

CREATE TABLE IF NOT EXISTS kafka_ledger
(
    event_id          String,
    event_type        String,
    ts                Float64,
    usage_event_id    String,
    request_id        String,
    key_id            Nullable(String),
    tenant            Nullable(String),
    model             String,
    variant           Nullable(String),
    experiment_id     Nullable(String),
    status            String,
    prompt_tokens     UInt32,
    completion_tokens UInt32,
    cached_tokens     UInt32,
    price_version     Nullable(UInt32),
    input_micros      Int64,
    output_micros     Int64,
    cached_micros     Int64,
    cost_micros       Int64,
    cache_hit_tokens  UInt32,
    cache_hit_micros  Int64,
    occurred_at       Float64
)
ENGINE = Kafka(sluice_kafka, kafka_topic_list = 'sluice.ledger', kafka_num_consumers = 1,
               kafka_skip_broken_messages = 1000, kafka_handle_error_mode = 'stream')
SETTINGS input_format_skip_unknown_fields = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_ledger_to_ledger TO ledger AS
SELECT
    event_id, toDateTime64(ts, 3, 'UTC') AS ts, toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    usage_event_id, request_id, ifNull(tenant, '') AS tenant, ifNull(key_id, '') AS key_id,
    model, ifNull(variant, '') AS variant, ifNull(experiment_id, '') AS experiment_id, status,
    prompt_tokens, completion_tokens, cached_tokens, price_version, input_micros,
    output_micros, cached_micros, cost_micros, toDate(toDateTime64(occurred_at, 3, 'UTC')) AS day,
    cache_hit_tokens, cache_hit_micros
FROM kafka_ledger
WHERE length(_error) = 0 AND event_type = 'ledger_entry';

-- Messages that were not valid JSON events, kept for a look rather than dropped silently.
CREATE TABLE IF NOT EXISTS kafka_errors
(
    topic      LowCardinality(String),
    partition  UInt32,
    offset     UInt64,
    raw        String,
    error      String,
    seen_at    DateTime DEFAULT now()
)
ENGINE = MergeTree
ORDER BY (topic, seen_at)
TTL seen_at + INTERVAL 30 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_requests_errors TO kafka_errors AS
SELECT _topic AS topic, _partition AS partition, _offset AS offset, _raw_message AS raw,
       _error AS error FROM kafka_requests WHERE length(_error) > 0;
CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_usage_errors TO kafka_errors AS
SELECT _topic AS topic, _partition AS partition, _offset AS offset, _raw_message AS raw,
       _error AS error FROM kafka_usage WHERE length(_error) > 0;
CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_cache_errors TO kafka_errors AS
SELECT _topic AS topic, _partition AS partition, _offset AS offset, _raw_message AS raw,
       _error AS error FROM kafka_cache WHERE length(_error) > 0;
CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_ledger_errors TO kafka_errors AS
SELECT _topic AS topic, _partition AS partition, _offset AS offset, _raw_message AS raw,
       _error AS error FROM kafka_ledger WHERE length(_error) > 0;
