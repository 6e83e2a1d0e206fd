"""Prompt embeddings for the semantic cache, from a worker of the embedding model.

The gateway asks like any client would: an `InferenceRequested` of kind embedding on the
model's topic, answered on this gateway's reply topic. It is the gateway's own work, so
it carries no key and counts against no key's limits.
"""

from __future__ import annotations

import base64
import time

import numpy as np
from aiokafka import AIOKafkaProducer

from broker.replies import ReplyRouter
from gateway.workers import WorkerRegistry
from schemas import topics
from schemas.events import InferenceRequested, new_id


class PromptEmbedder:
    def __init__(self, producer: AIOKafkaProducer, replies: ReplyRouter,
                 registry: WorkerRegistry, model: str, *, partitions: int,
                 timeout: float) -> None:
        self._producer = producer
        self._replies = replies
        self._registry = registry
        self.model = model
        self._topic = topics.inference(model, partitions).name
        self._timeout = timeout

    def available(self) -> bool:
        return bool(self._registry.live(self.model))

    async def embed(self, text: str) -> np.ndarray | None:
        """`text`'s embedding at unit length, or None if no worker answered in time."""
        rid = f"cache-{new_id()}"
        event, pending = self._replies.open(rid, InferenceRequested(
            request_id=rid, model=self.model, kind="embedding", inputs=(text,),
            reply_topic=self._replies.topic, deadline=time.time() + self._timeout),
            urgent=True)
        encoded = None
        try:
            await self._producer.send(self._topic, event.encode(), key=rid.encode())
            while True:
                chunk = await pending.get(timeout=self._timeout)
                if chunk.error is not None:
                    return None
                encoded = next((d.embedding for d in chunk.choices if d.embedding), encoded)
                if chunk.final:
                    break
        except TimeoutError:
            return None
        finally:
            self._replies.close(rid)
        return None if encoded is None else unit(decode_vector(encoded))


def decode_vector(encoded: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(encoded), dtype="<f4")


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector
