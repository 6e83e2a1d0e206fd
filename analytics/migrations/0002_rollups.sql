-- Per-minute rollups per tenant, key and model, kept by materialized views, so reports
-- and dashboards never scan raw rows. Each stream's view fills its own columns; the others
-- stay at their defaults (0, an empty array, an empty quantile state), so one row can
-- carry requests, tokens, cost and cache savings together.
--
-- Latency and TTFT are t-digest states: they merge across minutes, keys and models into
-- p50/p95/p99 without the raw rows. They count completed, non-error requests only, so a
-- burst of fast rejections does not flatter the latency.
--
-- An hourly rollup is kept from the minute one by a chained view: a long period reads
-- whole hours from it and only the partial hours at its edges from the minute rollup.

CREATE TABLE IF NOT EXISTS rollup_minute
(
    tenant                  LowCardinality(String),
    key_id                  String,
    model                   LowCardinality(String),
    bucket                  DateTime('UTC') COMMENT 'start of the minute (or hour)',
    requests                SimpleAggregateFunction(sum, UInt64),
    errors                  SimpleAggregateFunction(sum, UInt64),
    cache_hits              SimpleAggregateFunction(sum, UInt64),
    cache_misses            SimpleAggregateFunction(sum, UInt64),
    latency_state           AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float32),
    ttft_state              AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float32),
    usage_records           SimpleAggregateFunction(sum, UInt64),
    prompt_tokens           SimpleAggregateFunction(sum, UInt64),
    completion_tokens       SimpleAggregateFunction(sum, UInt64),
    cached_tokens           SimpleAggregateFunction(sum, UInt64),
    ledger_entries          SimpleAggregateFunction(sum, UInt64),
    unpriced_entries        SimpleAggregateFunction(sum, UInt64),
    cost_micros             SimpleAggregateFunction(sum, Int64),
    price_versions          SimpleAggregateFunction(groupUniqArrayArray, Array(UInt32)),
    saved_prompt_tokens     SimpleAggregateFunction(sum, UInt64),
    saved_completion_tokens SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant, key_id, bucket, model)
TTL bucket + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS rollup_hour AS rollup_minute
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant, key_id, bucket, model)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_minute_requests TO rollup_minute AS
SELECT
    tenant, key_id, model, toStartOfMinute(ts) AS bucket,
    count() AS requests,
    countIf(status = 'rejected' OR status_code >= 400) AS errors,
    countIf(cache = 'hit') AS cache_hits,
    countIf(cache = 'miss') AS cache_misses,
    quantilesTDigestStateIf(0.5, 0.95, 0.99)(
        latency_ms, status = 'completed' AND status_code < 400) AS latency_state,
    quantilesTDigestStateIf(0.5, 0.95, 0.99)(
        assumeNotNull(ttft_ms), ttft_ms IS NOT NULL AND status_code < 400) AS ttft_state
FROM requests
GROUP BY tenant, key_id, model, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_minute_usage TO rollup_minute AS
SELECT
    tenant, key_id, model, toStartOfMinute(ts) AS bucket,
    count() AS usage_records,
    sum(toUInt64(prompt_tokens)) AS prompt_tokens,
    sum(toUInt64(completion_tokens)) AS completion_tokens,
    sum(toUInt64(cached_tokens)) AS cached_tokens
FROM usage
GROUP BY tenant, key_id, model, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_minute_ledger TO rollup_minute AS
SELECT
    tenant, key_id, model, toStartOfMinute(occurred_at) AS bucket,
    count() AS ledger_entries,
    countIf(price_version IS NULL) AS unpriced_entries,
    sum(cost_micros) AS cost_micros,
    groupUniqArrayIf(assumeNotNull(price_version), price_version IS NOT NULL) AS price_versions
FROM ledger
GROUP BY tenant, key_id, model, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_minute_cache TO rollup_minute AS
SELECT
    tenant, key_id, model, toStartOfMinute(ts) AS bucket,
    sumIf(toUInt64(prompt_tokens), event_type = 'cache_hit') AS saved_prompt_tokens,
    sumIf(toUInt64(completion_tokens), event_type = 'cache_hit') AS saved_completion_tokens
FROM cache
WHERE event_type = 'cache_hit'
GROUP BY tenant, key_id, model, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_hour_from_minute TO rollup_hour AS
SELECT
    tenant, key_id, model, toStartOfHour(bucket) AS bucket,
    sum(requests) AS requests,
    sum(errors) AS errors,
    sum(cache_hits) AS cache_hits,
    sum(cache_misses) AS cache_misses,
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(latency_state) AS latency_state,
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(ttft_state) AS ttft_state,
    sum(usage_records) AS usage_records,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(ledger_entries) AS ledger_entries,
    sum(unpriced_entries) AS unpriced_entries,
    sum(cost_micros) AS cost_micros,
    groupUniqArrayArray(price_versions) AS price_versions,
    sum(saved_prompt_tokens) AS saved_prompt_tokens,
    sum(saved_completion_tokens) AS saved_completion_tokens
FROM rollup_minute
GROUP BY tenant, key_id, model, bucket;

-- What each model's newest price looks like in the ledger, to price the tokens a cache
-- hit saved: the entries' own micro-dollars over their tokens, per price version.
CREATE TABLE IF NOT EXISTS model_prices
(
    model             LowCardinality(String),
    price_version     UInt32,
    fresh_prompt_tokens SimpleAggregateFunction(sum, UInt64),
    input_micros      SimpleAggregateFunction(sum, Int64),
    completion_tokens SimpleAggregateFunction(sum, UInt64),
    output_micros     SimpleAggregateFunction(sum, Int64),
    last_seen         SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (model, price_version)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS model_prices_ledger TO model_prices AS
SELECT
    model,
    assumeNotNull(price_version) AS price_version,
    sum(toUInt64(prompt_tokens - least(cached_tokens, prompt_tokens))) AS fresh_prompt_tokens,
    sum(input_micros) AS input_micros,
    sum(toUInt64(completion_tokens)) AS completion_tokens,
    sum(output_micros) AS output_micros,
    max(occurred_at) AS last_seen
FROM ledger
WHERE price_version IS NOT NULL
GROUP BY model, price_version;
