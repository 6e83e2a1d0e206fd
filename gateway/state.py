"""The state the routes share, and how a route finds it."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from aiokafka import AIOKafkaProducer
from starlette.requests import Request

from broker.journal import Journal
from broker.replies import ReplyRouter
from gateway.auth import IpLimiter
from gateway.cache import ResponseCache
from gateway.capacity import Capacity
from gateway.embedder import PromptEmbedder
from gateway.experiments import ExperimentBook
from gateway.keys import KeyStore
from gateway.leases import LeaseBook
from gateway.outcomes import Outcomes
from gateway.prices import PriceBook
from gateway.settings import Settings
from gateway.workers import WorkerRegistry


@dataclass
class GatewayState:
    """Everything the routes share, built in the app's lifespan."""

    settings: Settings
    producer: AIOKafkaProducer
    replies: ReplyRouter
    registry: WorkerRegistry
    capacity: Capacity
    outcomes: Outcomes
    keys: KeyStore
    ips: IpLimiter
    leases: LeaseBook
    experiments: ExperimentBook
    prices: PriceBook
    streams: httpx.AsyncClient
    cache: ResponseCache
    embedder: PromptEmbedder
    journal: Journal | None = None


def state(request: Request) -> GatewayState:
    """The gateway's state, from any request to it."""
    return request.app.state.gateway  # type: ignore[no-any-return]
