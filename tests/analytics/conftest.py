"""Fixtures for analytics: a ClickHouse, the reporting API in-process, the analytics
process as a real child process, and that process behind a real gateway.

ClickHouse is testcontainers' ClickHouse server when a Docker engine answers, otherwise
chDB in a temporary folder. chDB opens one data path per process, so everything that
runs inside the test process shares one path (`inproc`), and each child process gets a
path of its own. With a server each gets a database instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from starlette.testclient import TestClient

from analytics.api import create_app
from analytics.settings import Settings
from analytics.warehouse import Warehouse
from schemas import topics
from schemas.events import AnyEvent, Event, Experiment, PriceSchedule, PriceVersion
from tests.analytics.harness import (
    INTERNAL_TOKEN,
    AnalyticsProc,
    ClickHouse,
    analytics_env,
    unique,
)
from tests.analytics.traffic import Traffic, produce, traffic
from tests.conftest import (
    ADMIN_KEY,
    Gateway,
    Proc,
    broker_at,
    create_key,
    free_port,
    start_gateway,
    wait_until,
)


def _docker_clickhouse() -> Iterator[str] | None:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return None
    from testcontainers.community.clickhouse import ClickHouseContainer

    def run() -> Iterator[str]:
        with ClickHouseContainer() as ch:
            host, port = ch.get_container_host_ip(), ch.get_exposed_port(8123)
            yield f"http://{ch.username}:{ch.password}@{host}:{port}"

    return run()


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouse]:
    root = tmp_path_factory.mktemp("clickhouse")
    docker = _docker_clickhouse()
    if docker is not None:
        for url in docker:
            yield ClickHouse(url, root)
        return
    yield ClickHouse(None, root)


@pytest.fixture(scope="session")
def settings(clickhouse: ClickHouse) -> Settings:
    """Settings for everything in this process: the one `inproc` ClickHouse."""
    return Settings(clickhouse_url=clickhouse.dsn("inproc"), internal_token=INTERNAL_TOKEN,
                    analytics_sink=False, session_timeout_ms=6000, heartbeat_interval_ms=500,
                    analytics_max_range_days=400, sql_max_execution_s=1.0,
                    sql_max_result_rows=1000)


@pytest.fixture(scope="session")
def warehouse(settings: Settings) -> Iterator[Warehouse]:
    """A migrated warehouse for the tests' own reads and writes."""
    from analytics import migrations

    wh = Warehouse(settings)
    with wh.writer() as client:
        migrations.migrate(client)
    yield wh
    wh.close()


@pytest.fixture(scope="session")
def api(settings: Settings, warehouse: Warehouse) -> Iterator[TestClient]:
    """The reporting API in-process, without its sink (the tests insert what they need)."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@dataclass(frozen=True)
class Tenants:
    """Two tenants' traffic, stored through the sink's own landing code."""

    ours: Traffic
    theirs: Traffic
    start: datetime
    end: datetime


@pytest.fixture(scope="session")
def two_tenants(warehouse: Warehouse) -> Tenants:
    from analytics import landing

    # Ten days ago at 22:30: inside every table's TTL, and off the hour.
    start = (datetime.now(UTC) - timedelta(days=10)).replace(hour=22, minute=30, second=0,
                                                              microsecond=0)
    # 300 requests 7 minutes apart: about 35 hours, over three days, off the hour.
    ours = traffic(unique("acme"), 300, start=start.timestamp(), spacing_s=420)
    theirs = traffic(unique("globex"), 200, start=start.timestamp() + 60, spacing_s=600,
                     keys=("key-g1", "key-g2"), models=("model-x", "model-z"))
    with warehouse.writer() as client:
        landing.land(client, landing.blocks(ours.events + theirs.events))
    return Tenants(ours, theirs, start, start + timedelta(days=3))


@dataclass(frozen=True)
class Stack:
    analytics: AnalyticsProc
    gateway: Gateway


@pytest.fixture(scope="session")
def gateway_stack(bootstrap: str, stack_env: dict[str, str], streams: Proc,
                  clickhouse: ClickHouse) -> Iterator[Stack]:
    """The analytics process (its own ClickHouse, consuming the session's broker) and a
    gateway that forwards the reporting API to it."""
    name = unique("stack")
    proc = AnalyticsProc("analytics-stack", analytics_env(
        clickhouse, name, bootstrap, batch_max_wait_s="0.3"), free_port())
    try:
        proc.wait_ready(120)
        gw = start_gateway("gateway-analytics", stack_env, analytics_url=proc.url,
                           internal_token=INTERNAL_TOKEN)
        try:
            yield Stack(proc, gw)
        finally:
            gw.proc.stop(30)
    finally:
        proc.terminate()


@dataclass(frozen=True)
class Seeded:
    """`ours` is the tenant of `key_id` (secret `secret`), in A/B test `experiment_id`."""

    ours: Traffic
    theirs: Traffic
    secret: str
    key_id: str
    experiment_id: str


def _in_experiment(t: Traffic, experiment: Experiment) -> Traffic:
    """The same traffic, each request routed to its model's variant of `experiment`."""
    variant = {experiment.model_a: "a", experiment.model_b: "b"}
    events: list[tuple[str, AnyEvent]] = []
    for topic, event in t.events:
        if topic in (topics.REQUESTS, topics.USAGE):
            event = event.model_copy(update={"variant": variant[event.model],  # type: ignore[union-attr]
                                             "experiment_id": experiment.experiment_id})
        events.append((topic, event))
    return Traffic(t.tenant, events, t.expected)


async def _publish_definitions(bootstrap: str, records: list[tuple[str, str, Event]]) -> None:
    """State events on compacted topics, keyed as the admin API keys them."""
    await broker_at(bootstrap).ensure()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic, key, event in records:
            await producer.send_and_wait(topic, event.encode(), key=key.encode())
    finally:
        await producer.stop()


@pytest.fixture(scope="session")
def seeded(gateway_stack: Stack, bootstrap: str) -> Seeded:
    """A tenant's traffic of the last three hours in an A/B test, and another tenant's,
    published to the stack's topics and landed (and measured by the streams app)."""
    gw = gateway_stack.gateway
    key = create_key(gw, unique("dash-tenant"), tier="enterprise")
    tenant, key_id, secret = str(key["tenant"]), str(key["key_id"]), str(key["secret"])
    model_a, model_b = unique("dash-a"), unique("dash-b")
    experiment = Experiment(experiment_id=unique("ab_dash"), name="dashboard", model_a=model_a,
                            model_b=model_b, split=50, created_at=time.time())
    # The same rates the traffic's own ledger entries use (2, 5 and 1 for a cache hit),
    # so the streams app's pricing of the usage events agrees with them.
    price = PriceVersion(version=1, effective_from=0, input_micros_per_million=2_000_000,
                         output_micros_per_million=5_000_000,
                         cached_micros_per_million=2_000_000,
                         cache_hit_micros_per_million=1_000_000)
    asyncio.run(_publish_definitions(bootstrap, [
        (topics.PRICES, m, PriceSchedule(model=m, versions=(price,))) for m in (model_a, model_b)
    ] + [(topics.EXPERIMENTS, experiment.experiment_id, experiment)]))
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    wait_until(lambda: any(e["experiment_id"] == experiment.experiment_id for e in httpx.get(
        f"{gw.url}/v1/admin/ab-tests", headers=admin, timeout=5).json()["data"]),
        30, "the gateway to see the A/B test", gw.proc)

    # The last three hours, one request every 45 s, on two keys and the test's two models.
    start = time.time() - 3 * 3600 + 30
    ours = _in_experiment(traffic(tenant, 240, start=start, spacing_s=45,
                                  keys=(key_id, unique("dash-key")), models=(model_a, model_b)),
                          experiment)
    theirs = traffic(unique("dash-other"), 60, start=start, spacing_s=120,
                     keys=(unique("their-key"),), models=(unique("their-model"),))
    asyncio.run(produce(bootstrap, ours.events + theirs.events))

    def landed() -> bool:
        r = httpx.get(f"{gw.url}/v1/analytics", headers={"Authorization": f"Bearer {secret}"},
                      params={"from": int(start) - 60}, timeout=10)
        body = r.json()
        return (r.status_code == 200 and body["requests"] == ours.expected.requests
                and body["spend"]["total_micros"] > 0 and body["tokens"]["total"] > 0)

    def measured() -> bool:
        r = httpx.get(f"{gw.url}/v1/admin/ab-tests/{experiment.experiment_id}", headers=admin,
                      timeout=10).json()
        return sum(v["requests"] for v in r["variants"].values()) == ours.expected.requests

    wait_until(landed, 90, "the traffic to land in ClickHouse", gateway_stack.analytics)  # type: ignore[arg-type]
    wait_until(measured, 60, "the streams app to measure the A/B test", gw.proc)
    return Seeded(ours, theirs, secret, key_id, experiment.experiment_id)
