"""The worker's Kafka clients."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import tansu

tansu.install()


def producer(bootstrap: str) -> AIOKafkaProducer:
    # linger 0: a token chunk leaves at once; aiokafka still batches whatever queues up
    # behind a request in flight, which is where coalescing under load comes from.
    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)


def requests_consumer(
    bootstrap: str, group: str, fetch_wait_ms: int, session_timeout_ms: int
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_wait_ms,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(100, session_timeout_ms // 3),
        max_poll_interval_ms=300_000,
    )


def broadcast_consumer(bootstrap: str) -> AIOKafkaConsumer:
    """A consumer outside any group: every worker sees every control message."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
