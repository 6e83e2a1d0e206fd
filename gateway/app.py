"""The gateway's ASGI app: routes, middleware, error handlers and the Kafka clients' lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from broker import Broker
from broker.journal import Journal
from gateway import (
    accounts,
    admin,
    chat,
    completions,
    dashboard,
    embeddings,
    errors,
    models,
    reporting,
    status,
)
from gateway.auth import IpLimiter
from gateway.cache import ResponseCache
from gateway.capacity import Capacity
from gateway.embedder import PromptEmbedder
from gateway.exceptions import GatewayError
from gateway.experiments import ExperimentBook
from gateway.keys import KeyStore, Principal
from gateway.leases import LeaseBook
from gateway.metrics import Metrics
from gateway.middleware.body_limit import BodyLimitMiddleware
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.outcomes import Outcomes
from gateway.prices import PriceBook
from gateway.settings import Settings
from gateway.state import GatewayState
from gateway.workers import WorkerRegistry
from schemas import topics
from schemas.tiers import effective_limits


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        broker = Broker.of(settings)
        profile = broker.profile
        gateway_id = settings.resolved_gateway_id
        await broker.ensure([  # the reply topics are the router's own
            topics.inference(m, settings.inference_partitions) for m in settings.models])
        producer = broker.producer()
        await producer.start()
        replies = broker.replies(gateway_id)
        registry = WorkerRegistry(broker.reader(profile.control_wait_ms), settings.models)
        keys = KeyStore(broker.reader(profile.views_wait_ms), settings.admin_key)
        experiments = ExperimentBook(broker.reader(profile.views_wait_ms))
        prices = PriceBook(broker.reader(profile.control_wait_ms))
        metrics = Metrics()
        outcomes = Outcomes(producer, metrics)
        cache = ResponseCache(broker.reader(profile.views_wait_ms), gateway_id,
                              max_bytes=settings.cache_max_mb * 1_000_000,
                              publish=lambda e, k: outcomes.publish(topics.CACHE, e, k))
        followers = (replies, registry, keys, experiments, prices, cache)
        for follower in followers:
            await follower.start()
        leases = LeaseBook(producer, replies, gateway_id,
                           timeout=settings.lease_timeout_s, lease_ttl=settings.lease_ttl_s,
                           max_requests=settings.lease_max_requests,
                           round_trips=metrics.lease_round_trips)
        streams = httpx.AsyncClient(base_url=settings.streams_url)
        app.state.reporting = reporting.client(settings)
        app.state.gateway = GatewayState(
            settings=settings,
            journal=Journal(settings.journal_path) if settings.journal_path else None,
            producer=producer,
            replies=replies,
            registry=registry,
            capacity=Capacity(registry, timeout=settings.admission_timeout,
                              queue_factor=settings.queue_factor,
                              fixed_limit=settings.max_in_flight_per_model),
            outcomes=outcomes,
            keys=keys,
            ips=IpLimiter(settings.unauthenticated_per_minute, settings.unauthenticated_burst,
                          settings.trusted_proxies),
            leases=leases,
            experiments=experiments,
            prices=prices,
            streams=streams,
            cache=cache,
            embedder=PromptEmbedder(producer, replies, registry, settings.cache_embedding_model,
                                    partitions=settings.inference_partitions,
                                    timeout=settings.cache_embedding_timeout_s),
        )
        loops = [asyncio.create_task(f.run()) for f in followers]
        loops.append(asyncio.create_task(_sweep_leases(leases, keys)))
        # Serve only with complete views: a key created before this start must work.
        await asyncio.wait_for(asyncio.gather(*(v.caught_up.wait()
                                                for v in (keys, experiments, prices, cache))),
                               60)
        gc.collect()
        gc.freeze()  # what start-up made lives as long as the process; collections skip it
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            leases.close()
            await outcomes.drain()
            for follower in followers:
                await follower.stop()
            await streams.aclose()
            await app.state.reporting.aclose()
            await producer.stop()

    return Starlette(
        routes=[
            *chat.routes,
            *completions.routes,
            *embeddings.routes,
            *models.routes,
            *accounts.routes,
            *admin.routes,
            *reporting.routes,
            *dashboard.routes,
            *status.routes,
        ],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers={
            GatewayError: errors.gateway_error,
            HTTPException: errors.http_error,
            Exception: errors.unexpected,
        },
        lifespan=lifespan,
    )


async def _sweep_leases(leases: LeaseBook, keys: KeyStore) -> None:
    """Hand idle concurrency slots back to the limiter, and keep busy ones alive."""
    while True:
        await asyncio.sleep(1.0)
        principals = {}
        for key_id in list(leases.leases):
            key = keys.keys.get(key_id)
            if key is not None:
                principals[key_id] = Principal(key.key_id, key.tenant, False,
                                               effective_limits(key.tier, key.limits),
                                               key.budgets)
        await leases.sweep(principals)
