"""Per-model capacity: a request runs only if a live worker serves its model and a slot is free.

Each gateway runs up to `queue_factor` times the live capacity of a model (the sum of
its workers' batch sizes) at once, so the engines stay full while queues stay bounded. A
request that cannot get a slot within `admission_timeout` is turned away with a 503
rather than left to wait without limit.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque

from gateway.exceptions import ServiceUnavailable
from gateway.workers import WorkerRegistry


class Slot:
    """A held slot; releasing it twice is harmless."""

    def __init__(self, capacity: Capacity, model: str) -> None:
        self._capacity = capacity
        self.model = model
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._capacity._release(self.model)


class Capacity:
    """Slots for each model's requests in flight on this gateway."""

    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        timeout: float,
        queue_factor: float,
        fixed_limit: int | None = None,
    ) -> None:
        self._registry = registry
        self._timeout = timeout
        self._queue_factor = queue_factor
        self._fixed_limit = fixed_limit
        self.in_flight: dict[str, int] = defaultdict(int)
        self._waiters: dict[str, deque[asyncio.Future[None]]] = defaultdict(deque)

    def limit(self, model: str) -> int:
        if self._fixed_limit is not None:
            return self._fixed_limit
        return max(1, int(self._registry.capacity(model) * self._queue_factor))

    async def acquire(self, model: str) -> Slot:
        """A slot for a request to `model`, waiting up to the timeout for one to free up."""
        if not self._registry.live(model):
            raise ServiceUnavailable(
                f"No worker is serving '{model}' right now. Please retry shortly.",
                code="no_live_worker",
            )
        if self.in_flight[model] < self.limit(model) and not self._waiters[model]:
            self.in_flight[model] += 1
            return Slot(self, model)
        # Wait in line; `_release` hands the slot over already counted.
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[model].append(waiter)
        try:
            await asyncio.wait_for(waiter, self._timeout)
        except TimeoutError:
            raise ServiceUnavailable(
                f"'{model}' is at capacity and no slot freed up within "
                f"{self._timeout:g}s. Please retry shortly.",
                code="admission_timeout",
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(model)
            raise
        finally:
            if waiter in self._waiters[model]:
                self._waiters[model].remove(waiter)
        return Slot(self, model)

    def _release(self, model: str) -> None:
        self.in_flight[model] -= 1
        waiters = self._waiters[model]
        while waiters and self.in_flight[model] < self.limit(model):
            waiter = waiters.popleft()
            if not waiter.done():
                self.in_flight[model] += 1
                waiter.set_result(None)
