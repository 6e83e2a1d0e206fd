"""The gateway's Kafka clients."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import tansu

tansu.install()


def producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)


def reader(bootstrap: str, fetch_wait_ms: int) -> AIOKafkaConsumer:
    """A consumer outside any group, assigned partitions by hand."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms
    )
