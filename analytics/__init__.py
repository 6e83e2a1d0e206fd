"""Analytics: a batched, idempotent ClickHouse sink for every event, and the reporting
API over it. (Issue 4 builds it.)"""
