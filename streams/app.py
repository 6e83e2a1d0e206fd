"""The streams app: limits, quotas, billing and A/B metrics as Faust tables.

Every table is keyed so that the events that change it arrive on one partition: a key's
account changes with lease requests and usage (both keyed by key_id), a tenant's totals
and an experiment's metrics arrive on internal topics keyed by tenant and experiment.

Delivery is at least once. A replay after a crash is recognised by source offset (each
table value remembers the last offset it applied), so totals never count an event twice;
what a replayed event sends on (ledger entries, forwards) is sent again and deduplicated
by the receiver by the same offsets or by stable ids.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from broker import Broker
from schemas import reporting, topics
from schemas.events import (
    BudgetAlert,
    LeaseRequested,
    PriceSchedule,
    RequestCompleted,
    RequestRejected,
    UsageRecorded,
    decode,
)
from schemas.tiers import USAGE_TOTALS, Limits
from streams import billing, experiments, restore
from streams.limiter import Account, periods, recent
from streams.settings import Settings
from streams.transport import App

settings = Settings()
broker = Broker.of(settings)
log = logging.getLogger("sluice.streams")

app = App(
    settings.streams_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store="memory://",
    datadir=settings.home / "streams" / settings.streams_id,
    topic_partitions=8,
    topic_replication_factor=1,
    web_host=settings.streams_host,
    web_port=settings.streams_port,
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 4),
    broker_commit_interval=settings.commit_interval_s,
    producer_linger=0.0,
    consumer_auto_offset_reset="earliest",
    web_enabled=True,
)
app.broker = broker
app.busy_topics = frozenset({topics.LEASES})

# -- topics -------------------------------------------------------------------------------

leases_topic = app.topic(topics.LEASES, value_serializer="raw", key_serializer="raw")
usage_topic = app.topic(topics.USAGE, value_serializer="raw", key_serializer="raw")
requests_topic = app.topic(topics.REQUESTS, value_serializer="raw", key_serializer="raw")
prices_topic = app.topic(topics.PRICES, value_serializer="raw", key_serializer="raw")
ledger_topic = app.topic(topics.LEDGER, value_serializer="raw", key_serializer="raw")
alerts_topic = app.topic(topics.ALERTS, value_serializer="raw", key_serializer="raw")
# Internal topics are named for the app, like Faust's changelogs, so two streams apps on
# one cluster (a staging one, a test's) never read each other's forwards.
tenant_usage_topic = app.topic(f"{settings.streams_id}-tenant-usage", partitions=8,
                               internal=True, value_serializer="json", key_serializer="raw")
experiment_events_topic = app.topic(f"{settings.streams_id}-experiment-events", partitions=8,
                                    internal=True, value_serializer="json",
                                    key_serializer="raw")

# -- tables -------------------------------------------------------------------------------

# Keys are bytes, values JSON dicts. `key_type=bytes` writes the changelog keys raw: with
# Faust's default (JSON) a restarted worker could not read its changelog back.
# Tables written from batches (`take_events`) have no current event to take the changelog
# partition from; the partitioner picks it from the key, as producers do for the sources
# (streams/transport.py: even before the producer has the changelog's metadata).
accounts = app.Table("accounts", key_type=bytes, use_partitioner=True)
tenant_totals = app.Table("tenant_totals", key_type=bytes, use_partitioner=True)
experiment_metrics = app.Table("experiment_metrics", key_type=bytes)
# Partitioned like its source, sluice.prices (Faust refuses a changelog that is not).
prices = app.GlobalTable("prices", key_type=bytes,
                         partitions=topics.static(topics.PRICES).partitions)

class _Grants:
    """Lease grants leave through a producer of their own. A Kafka client keeps one produce
    request in flight per broker, and the app's producer also carries changelog records,
    ledger entries and forwards: behind those a grant would wait for their acks."""

    producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self.producer is None:
            producer = broker.producer()
            await producer.start()
            self.producer = producer

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Without waiting for delivery: a grant that is lost (or comes after the stop)
        is asked for again."""
        if self.producer is None:
            return
        delivery = await self.producer.send(topic, value, key=key)
        delivery.add_done_callback(_log_failure)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None


def _log_failure(delivery: asyncio.Future[Any]) -> None:
    if not delivery.cancelled() and delivery.exception() is not None:
        log.warning("a lease grant was not delivered: %r", delivery.exception())


grants = _Grants()


@app.on_before_shutdown.connect
async def _stop_grants(sender: Any, **kwargs: Any) -> None:
    await grants.stop()


def _key(raw: str | None) -> bytes:
    return (raw or "anonymous").encode()


# -- agents -------------------------------------------------------------------------------


@app.agent(leases_topic)
async def grant_leases(stream: Any) -> None:
    """Answers lease requests from each key's budget; counts requests, tokens and slots."""
    await grants.start()
    async for event in stream.events():
        try:
            req = LeaseRequested.model_validate_json(event.value)
        except ValidationError:
            continue
        if req.urgent:
            app.hurry()
        account = Account.load(accounts.get(req.key_id.encode()))
        source = f"leases:{event.message.partition}"
        if account.seen(source, event.message.offset):
            continue  # answered before a crash; the gateway has retried since
        grant, crossed = account.grant(req, time.time(), settings.lease_ttl_s,
                                       settings.slot_ttl_s)
        account.mark(source, event.message.offset)
        # Written before the answer goes out: between loading an account and writing it
        # back no agent may await, or usage billed meanwhile (`bill_usage`) would be
        # overwritten, and with it totals and applied offsets. A crash after this write
        # and before the answer costs the grant (the replay is skipped, the gateway asks
        # again), never more than the limit.
        accounts[req.key_id.encode()] = account.dump()
        await grants.send(req.reply_topic, req.event_id.encode(), grant.encode())
        for budget, threshold, used in crossed:
            day, month = periods(time.time())
            alert = BudgetAlert(key_id=req.key_id, tenant=req.tenant, budget=budget,
                                level="soft", threshold=threshold, used=used,
                                period=day if budget.startswith("daily") else month)
            await alerts_topic.send(key=req.key_id.encode(), value=alert.encode())


@app.agent(usage_topic)
async def bill_usage(stream: Any) -> None:
    """Prices every usage event into the ledger and the key's day and month totals, gives
    back the tokens a request reserved but did not use, and forwards the totals to the
    tenant's partition.

    Events come in batches, so that a key's account is written once per batch, and what a
    batch sends is not awaited: a broker round trip per event, or per batch, would cap
    the rate.
    """
    async for batch in stream.take_events(settings.streams_batch_max,
                                          within=settings.streams_batch_wait_s):
        await _send_all(_bill(batch, time.time()))


Outgoing = list[tuple[str, bytes, bytes]]  # (topic, key, value)


def _bill(events: list[Any], now: float) -> Outgoing:
    """Apply a batch of usage events to the accounts table; returns what to send.

    It never awaits, so no other agent (the limiter) changes an account in between. A
    replayed event (offset already applied) changes nothing but is sent on again: what
    went out before the crash may be lost, and receivers drop what they already have.
    """
    accounts_now: dict[bytes, Account] = {}
    changed: set[bytes] = set()
    tenant_items: dict[tuple[bytes, str], list[list[Any]]] = {}
    out: Outgoing = []
    for event in events:
        try:
            usage = UsageRecorded.model_validate_json(event.value)
        except ValidationError:
            continue
        key = _key(usage.key_id)
        account = accounts_now.get(key)
        if account is None:
            account = accounts_now[key] = Account.load(accounts.get(key))
        entry = billing.price(usage, _schedule(usage.model))
        offset = event.message.offset
        source = f"usage:{event.message.partition}"
        if account.seen(source, offset):
            if account.was_skipped(source, offset):
                continue  # a duplicate, skipped the first time too
        else:
            if account.duplicate(usage.event_id, source, offset):
                account.mark(source, offset)
                changed.add(key)
                continue  # the same request billed once already, from another execution
            account.add_usage(entry.day, entry.month, usage.prompt_tokens,
                              usage.completion_tokens, entry.cached_tokens, entry.cost_micros)
            account.refund(usage.reserved_tokens, usage.reserved_at,
                           usage.prompt_tokens + usage.completion_tokens, now)
            account.mark(source, offset)
            changed.add(key)
        out.append((ledger_topic.get_topic_name(), key, entry.encode()))
        if usage.tenant:
            tenant_items.setdefault((usage.tenant.encode(), source), []).append([
                offset, entry.day, entry.month, usage.prompt_tokens, usage.completion_tokens,
                entry.cached_tokens, entry.cost_micros])
        if usage.experiment_id and usage.variant:
            out.append((experiment_events_topic.get_topic_name(),
                        usage.experiment_id.encode(), json.dumps({
                            "origin": source, "offset": offset, "kind": "usage",
                            "variant": usage.variant, "model": usage.model,
                            "prompt_tokens": usage.prompt_tokens,
                            "completion_tokens": usage.completion_tokens,
                            "cost_micros": entry.cost_micros}).encode()))
    for key in changed:
        accounts[key] = accounts_now[key].dump()
    # One forward per tenant and source partition, its items in offset order.
    out.extend((tenant_usage_topic.get_topic_name(), tenant,
                json.dumps({"origin": origin, "items": items}).encode())
               for (tenant, origin), items in tenant_items.items())
    return out


async def _send_all(out: Outgoing) -> None:
    """Hand everything to the producer, in order per partition, without waiting for the
    broker: the next batch is billed meanwhile. The producer's flush, which comes before
    a batch's offsets are committed, waits until all of it is delivered."""
    producer = app.producer
    for topic, key, value in out:
        producer.track(await producer.send(topic, key, value, None, None, None))


_schedules: dict[str, tuple[dict[str, Any], PriceSchedule]] = {}


def _schedule(model: str) -> PriceSchedule | None:
    """The model's price schedule from the `prices` table, parsed once per change."""
    raw = prices.get(model.encode())
    if raw is None:
        return None
    cached = _schedules.get(model)
    if cached is None or cached[0] is not raw:
        cached = _schedules[model] = (raw, PriceSchedule.model_validate(raw))
    return cached[1]


@app.agent(tenant_usage_topic)
async def total_tenants(stream: Any) -> None:
    """Adds up each tenant's requests, tokens and spend per UTC day and month."""
    async for batch in stream.take_events(settings.streams_batch_max,
                                          within=settings.streams_batch_wait_s):
        tenants_now: dict[bytes, dict[str, Any]] = {}
        for event in batch:
            tenant, origin = event.key, event.value["origin"]
            totals = tenants_now.get(tenant)
            if totals is None:
                totals = tenants_now[tenant] = (tenant_totals.get(tenant)
                                                or {"origins": {}, "periods": {}})
            for offset, day, month, *amounts in event.value["items"]:
                if offset <= totals["origins"].get(origin, -1):
                    continue  # sent again after a crash; counted already
                totals["origins"][origin] = offset
                for period in (day, month):
                    t = totals["periods"].setdefault(period, dict.fromkeys(USAGE_TOTALS, 0))
                    t["requests"] += 1
                    for name, amount in zip(USAGE_TOTALS[1:], amounts, strict=True):
                        t[name] += amount
        for tenant, totals in tenants_now.items():
            totals["periods"] = recent(totals["periods"])
            tenant_totals[tenant] = totals


@app.agent(requests_topic)
async def route_outcomes(stream: Any) -> None:
    """Sends the outcome of every request in an A/B test to its experiment's partition."""
    async for event in stream.events():
        try:
            outcome = decode(event.value)
        except ValidationError:
            continue
        if not isinstance(outcome, RequestCompleted | RequestRejected):
            continue
        if not (outcome.experiment_id and outcome.variant):
            continue
        completed = isinstance(outcome, RequestCompleted)
        await experiment_events_topic.send(key=outcome.experiment_id.encode(), value={
            "origin": f"requests:{event.message.partition}", "offset": event.message.offset,
            "kind": "outcome", "variant": outcome.variant, "model": outcome.model,
            "error": outcome.status_code >= 500 or not completed,
            "latency_ms": outcome.latency_ms,
            "ttft_ms": outcome.ttft_ms if completed else None,
            "cache_hit": completed and outcome.cache == "hit"})


@app.agent(experiment_events_topic)
async def measure_experiments(stream: Any) -> None:
    """Keeps per-variant requests, errors, tokens, cost, latency and TTFT, cache hits."""
    async for event in stream.events():
        v = event.value
        stats = experiments.ExperimentStats.load(experiment_metrics.get(event.key))
        if not stats.first_time(v["origin"], v["offset"]):
            continue
        variant = stats.variant(v["variant"])
        variant.model = v["model"]
        if v["kind"] == "usage":
            variant.prompt_tokens += v["prompt_tokens"]
            variant.completion_tokens += v["completion_tokens"]
            variant.cost_micros += v["cost_micros"]
        else:
            variant.requests += 1
            variant.errors += bool(v["error"])
            variant.cache_hits += bool(v["cache_hit"])
            if not v["error"]:
                variant.latency.add(v["latency_ms"])
                if v["ttft_ms"] is not None:
                    variant.ttft.add(v["ttft_ms"])
        experiment_metrics[event.key] = stats.dump()


@app.agent(prices_topic)
async def follow_prices(stream: Any) -> None:
    """Keeps every model's price schedule, for pricing usage at the time it happened."""
    async for event in stream.events():
        try:
            schedule = PriceSchedule.model_validate_json(event.value)
        except ValidationError:
            continue
        prices[schedule.model.encode()] = schedule.model_dump(mode="json")


# -- after a restart of the embedded stack ------------------------------------------------

restored = asyncio.Event()  # the tables hold the ledger's totals (or need none)


@app.task
async def restore_totals() -> None:
    """With `restore_from` (the embedded stack): once the tables are recovered, if they
    came back empty (a new broker), fill each key's and tenant's day and month totals from
    the ledger in ClickHouse (`streams.restore`). Ready waits for it."""
    if not settings.restore_from:
        restored.set()
        return
    await app.tables.recovery.completed.wait()
    while not app.assignor.assigned_actives():  # noqa: ASYNC110 (Faust has no event for it)
        await asyncio.sleep(0.1)
    if any(True for _ in accounts.keys()):
        log.info("totals recovered from the changelog; nothing to restore")
        restored.set()
        return
    url = settings.restore_from.rstrip("/") + reporting.BILLED_PATH
    headers = {reporting.TOKEN: settings.internal_token, reporting.ADMIN: "1"}
    params = {"since": int(restore.since(time.time()).timestamp())}
    async with httpx.AsyncClient(timeout=60) as http:
        for attempt in itertools.count():
            try:
                r = await http.get(url, params=params, headers=headers)
                r.raise_for_status()
                break
            except httpx.HTTPError as exc:
                log.warning("cannot read the ledger's totals yet (%s); retrying", exc)
                await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))
    keys, tenants = restore.periods(r.json()["rows"])
    for key_id, totals in keys.items():
        account = Account.load(accounts.get(key_id.encode()))
        account.totals = totals
        accounts[key_id.encode()] = account.dump()
    for tenant, totals in tenants.items():
        tenant_totals[tenant.encode()] = {"origins": {}, "periods": totals}
    log.info("restored the day and month totals of %d keys and %d tenants from the ledger",
             len(keys), len(tenants))
    restored.set()


# -- views (the gateway reads tables through these) ---------------------------------------


@app.page("/health")
async def health(web: Any, request: Any) -> Any:
    return web.json({"status": "ok"})


@app.page("/ready")
async def ready(web: Any, request: Any) -> Any:
    """200 once this worker has partitions and its tables are recovered: it can answer
    lease requests and table reads. 503 while it joins, rebalances or recovers."""
    assigned = len(app.assignor.assigned_actives())
    recovered = app.tables.recovery.completed.is_set()
    ok = assigned > 0 and recovered and not app.rebalancing and restored.is_set()
    return web.json({"ready": ok, "partitions": assigned, "recovered": recovered,
                     "rebalancing": app.rebalancing, "restored": restored.is_set()},
                    status=200 if ok else 503)


def routed(table: Any, param: str) -> Callable[[Any], Any]:
    """Like Faust's `table_route`: a key held by another worker is answered by that worker.
    A key this worker holds is answered here at once; Faust's router would answer 503
    until the producer happened to have metadata for the table's changelog."""

    def decorator(fun: Any) -> Any:
        @functools.wraps(fun)
        async def view(web: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            key = request.match_info[param]
            tp = app.producer.key_partition(table.changelog_topic.get_topic_name(),
                                            key.encode())
            if tp in app.assignor.assigned_actives():
                return await fun(web, request, *args, **kwargs)
            return await app.router.route_req(table.name, key, web.web, request)

        return view

    return decorator


@app.page("/accounts/{key_id}")
@routed(accounts, "key_id")
async def account_view(web: Any, request: Any, key_id: str) -> Any:
    """A key's totals; with `?limits=<JSON Limits>`, also its live status under them."""
    account = Account.load(accounts.get(key_id.encode()))
    body: dict[str, Any] = {"key_id": key_id, "totals": account.totals}
    if "limits" in request.query:
        try:
            limits = Limits.model_validate_json(request.query["limits"])
        except ValidationError as exc:
            return web.json({"error": str(exc)}, status=400)
        now = time.time()
        account.roll(now, limits)
        body["status"] = account.snapshot(now, limits).model_dump()
        body["concurrent_in_use"] = sum(h.slots for h in account.holdings.values())
    return web.json(body)


@app.page("/tenants/{tenant}")
@routed(tenant_totals, "tenant")
async def tenant_view(web: Any, request: Any, tenant: str) -> Any:
    totals = tenant_totals.get(tenant.encode()) or {"periods": {}}
    return web.json({"tenant": tenant, "totals": totals["periods"]})


@app.page("/prices/{model}")
async def price_view(web: Any, request: Any, model: str) -> Any:
    """The price schedule the app bills `model` with (a global table: every worker has it)."""
    schedule = prices.get(model.encode())
    if schedule is None:
        return web.json({"error": f"no price for {model}"}, status=404)
    return web.json(schedule)


@app.page("/experiments/{experiment_id}")
@routed(experiment_metrics, "experiment_id")
async def experiment_view(web: Any, request: Any, experiment_id: str) -> Any:
    stats = experiments.ExperimentStats.load(experiment_metrics.get(experiment_id.encode()))
    return web.json({"experiment_id": experiment_id, **experiments.readout(stats)})
