-- An hourly rollup per tenant and model, without the key: what a tenant's summary, time
-- series and totals read when they are not about one key. A tenant with many keys has
-- as many rows per hour in rollup_hour as it has busy (key, model) pairs; here it has
-- one per model, so a 90-day summary merges a few thousand rows, not hundreds of
-- thousands. Kept from rollup_hour by a chained view (inserts are deduplicated in
-- dependent views too, see analytics/landing.py); `key_id` is always ''.

CREATE TABLE IF NOT EXISTS rollup_tenant_hour AS rollup_hour
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant, key_id, bucket, model)  -- key_id is always ''
TTL bucket + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

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
    sum(saved_completion_tokens) AS saved_completion_tokens
FROM rollup_hour
GROUP BY tenant, model, bucket;

-- What was rolled up before this migration. Migrations run before the sink starts, so
-- nothing lands meanwhile; the token makes a re-run after a crash a no-op.
INSERT INTO rollup_tenant_hour
SETTINGS insert_deduplication_token = '0004_tenant_rollup_backfill'
SELECT
    tenant, '' AS key_id, model, bucket,
    sum(requests), sum(errors), sum(cache_hits), sum(cache_misses),
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(latency_state),
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(ttft_state),
    sum(usage_records), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
    sum(ledger_entries), sum(unpriced_entries), sum(cost_micros),
    groupUniqArrayArray(price_versions), sum(saved_prompt_tokens),
    sum(saved_completion_tokens)
FROM rollup_hour
GROUP BY tenant, model, bucket;
