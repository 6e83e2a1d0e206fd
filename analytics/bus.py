"""The analytics process's Kafka clients: the sink's consumer group and a plain reader."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from analytics.settings import Settings
from schemas import tansu, topics

tansu.install()

# The streams the sink lands in ClickHouse, one table each.
SOURCES: tuple[str, ...] = (topics.REQUESTS, topics.USAGE, topics.CACHE, topics.LEDGER)


def group_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The sink's member of the analytics consumer group; it commits by hand, after inserts."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.analytics_group,
        enable_auto_commit=False,
        # A new group starts from the oldest event: analytics wants all of them.
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.analytics_fetch_wait_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


def reader(bootstrap: str) -> AIOKafkaConsumer:
    """A consumer outside any group, assigned partitions by hand (to replay a batch)."""
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                            fetch_max_wait_ms=50)
