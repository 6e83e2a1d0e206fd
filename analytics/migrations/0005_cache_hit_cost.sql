-- What cache hits were billed, so savings are net: a hit saves what a fresh answer would
-- have cost (its tokens at the model's price) less what the hit itself was billed (its
-- tokens at the model's cache-hit price). The ledger keeps the hit's tokens and
-- micro-dollars; the rollups sum the micro-dollars as `hit_cost_micros`.
--
-- The rollup views are made again with the new column. Migrations run before the sink
-- starts, so nothing lands while a view is missing; rows rolled up before have 0.

ALTER TABLE ledger
    ADD COLUMN IF NOT EXISTS cache_hit_tokens UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cache_hit_micros Int64 DEFAULT 0;

ALTER TABLE rollup_minute
    ADD COLUMN IF NOT EXISTS hit_cost_micros SimpleAggregateFunction(sum, Int64) DEFAULT 0;

ALTER TABLE rollup_hour
    ADD COLUMN IF NOT EXISTS hit_cost_micros SimpleAggregateFunction(sum, Int64) DEFAULT 0;

ALTER TABLE rollup_tenant_hour
    ADD COLUMN IF NOT EXISTS hit_cost_micros SimpleAggregateFunction(sum, Int64) DEFAULT 0;

DROP VIEW IF EXISTS rollup_minute_ledger;

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_minute_ledger TO rollup_minute AS
SELECT
    tenant, key_id, model, toStartOfMinute(occurred_at) AS bucket,
    count() AS ledger_entries,
    countIf(price_version IS NULL) AS unpriced_entries,
    sum(cost_micros) AS cost_micros,
    groupUniqArrayIf(assumeNotNull(price_version), price_version IS NOT NULL) AS price_versions,
    sum(cache_hit_micros) AS hit_cost_micros
FROM ledger
GROUP BY tenant, key_id, model, bucket;

DROP VIEW IF EXISTS rollup_hour_from_minute;

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
    sum(saved_completion_tokens) AS saved_completion_tokens,
    sum(hit_cost_micros) AS hit_cost_micros
FROM rollup_minute
GROUP BY tenant, key_id, model, bucket;

DROP VIEW IF EXISTS rollup_tenant_hour_from_hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_tenant_hour_from_hour TO rollup_tenant_hour AS
SELECT
    tenant, '' AS key_id, model, bucket,
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
    sum(saved_completion_tokens) AS saved_completion_tokens,
    sum(hit_cost_micros) AS hit_cost_micros
FROM rollup_hour
GROUP BY tenant, model, bucket;
