"""Analytics configuration, read once at start from `SLUICE_*` environment variables."""

from __future__ import annotations

from pydantic import Field

from broker.settings import SluiceSettings


class Settings(SluiceSettings):
    clickhouse_url: str | None = Field(
        default=None,
        description="`http(s)://user:pass@host:8123/db` for a ClickHouse server or cluster; "
        "unset means the embedded engine at `chdb:///<home>/clickhouse`.",
    )

    analytics_host: str = "127.0.0.1"
    analytics_port: int = 8090
    internal_token: str = Field(
        default="",
        description="What the gateway sends in `x-sluice-internal-token`. Empty skips the "
        "check, which is only safe while the API listens on loopback; production sets it.",
    )

    analytics_group: str = "sluice-analytics"
    analytics_sink: bool = Field(
        default=True, description="Run the sink in this process; API-only replicas of a "
        "ClickHouse server deployment turn it off.",
    )
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    batch_max_events: int = Field(default=50_000, ge=1)
    batch_max_wait_s: float = Field(default=1.0, gt=0)
    batch_idle_s: float = Field(
        default=0.1, gt=0, description="A batch lands as soon as nothing more has come for "
        "this long: light traffic does not wait for `batch_max_wait_s`.")
    dedup_capacity: int = Field(
        default=500_000, description="Event ids remembered to drop upstream duplicates.",
    )
    dedup_warm_s: float = Field(
        default=900.0, description="At start, remember the ids of events this recent.",
    )

    analytics_max_range_days: int = Field(default=366, ge=1)
    analytics_max_buckets: int = Field(
        default=2000, ge=1, description="Points in one time series (`bucket=`).")
    analytics_query_clients: int = Field(default=4, ge=1)
    analytics_query_timeout_s: float = 30.0
    sql_max_execution_s: float = Field(default=10.0, gt=0)
    sql_max_result_rows: int = Field(default=100_000, ge=1)
    sql_max_query_bytes: int = Field(default=65_536, ge=1)

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.home / 'clickhouse').resolve()}"
