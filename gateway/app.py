"""The gateway's ASGI app: routes, middleware, error handlers and the Kafka clients' lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from gateway import bus, completions, errors, status
from gateway.admission import Admission
from gateway.exceptions import GatewayError
from gateway.metrics import Metrics
from gateway.middleware.body_limit import BodyLimitMiddleware
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.outcomes import Outcomes
from gateway.relay import GatewayState
from gateway.replies import ReplyRouter
from gateway.settings import Settings
from gateway.workers import WorkerRegistry
from schemas import topics


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        bootstrap = settings.kafka_bootstrap
        reply = topics.replies(settings.resolved_gateway_id)
        await bus.ensure_topics(bootstrap, [
            reply,
            *(topics.static(t) for t in (topics.INFERENCE_CONTROL, topics.REQUESTS,
                                         topics.WORKERS)),
            *(topics.inference(m, settings.inference_partitions) for m in settings.models),
        ])
        producer = bus.producer(bootstrap)
        await producer.start()
        replies = ReplyRouter(bus.reader(bootstrap, settings.kafka_fetch_wait_ms), reply.name)
        registry = WorkerRegistry(bus.reader(bootstrap, 100), settings.models)
        await replies.start()
        await registry.start()
        outcomes = Outcomes(producer, Metrics())
        app.state.gateway = GatewayState(
            settings=settings,
            producer=producer,
            replies=replies,
            registry=registry,
            admission=Admission(registry, timeout=settings.admission_timeout,
                                queue_factor=settings.queue_factor,
                                fixed_limit=settings.max_in_flight_per_model),
            outcomes=outcomes,
            reply_topic=reply.name,
        )
        loops = [asyncio.create_task(replies.run()), asyncio.create_task(registry.run())]
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await outcomes.drain()
            await replies.stop()
            await registry.stop()
            await producer.stop()

    return Starlette(
        routes=[
            Route(completions.CHAT, completions.chat_completions, methods=["POST"]),
            Route(completions.COMPLETIONS, completions.completions, methods=["POST"]),
            Route("/v1/models", status.models, methods=["GET"]),
            Route("/health", status.health, methods=["GET"]),
            Route("/ready", status.ready, methods=["GET"]),
            Route("/metrics", status.metrics, methods=["GET"]),
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
