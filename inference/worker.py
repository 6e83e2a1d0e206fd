"""The worker loop: Kafka in, vLLM in the middle, token chunks and usage out.

It keeps as many requests running as the engine batches (`max_num_seqs`) and pauses
fetching when full. It commits a partition only below its oldest unfinished request, so
whatever a dead worker had not finished is redelivered to another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from pydantic import ValidationError

from broker import Broker
from inference.engine import Engine
from inference.exceptions import BadPrompt
from inference.execution import Execution
from inference.offsets import OffsetTracker
from inference.settings import Settings
from schemas import topics
from schemas.events import (
    InferenceCancelled,
    InferenceError,
    InferenceRequested,
    TokenChunk,
    WorkerHeartbeat,
    decode,
)

log = logging.getLogger("sluice.worker")

CANCEL_MEMORY_S = 600.0


class Worker:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.worker_id = settings.resolved_worker_id
        self.topics = [topics.inference(n, settings.inference_partitions) for n in settings.names]
        self.broker = broker = Broker.of(settings)
        self.producer = broker.producer()
        self.consumer = broker.member(
            f"sluice.workers.{topics.topic_safe(settings.model)}",
            broker.profile.requests_wait_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.session_timeout_ms // 3),
            max_poll_interval_ms=300_000,
        )
        # Outside any group: every worker sees every cancellation.
        self.control = broker.reader(broker.profile.control_wait_ms)
        self.offsets = OffsetTracker()
        self.running: dict[str, asyncio.Task[None]] = {}
        # Where each running request sits; a redelivery of it moves this, not the task.
        self.positions: dict[str, tuple[TopicPartition, int]] = {}
        self.cancelled: dict[str, float] = {}
        self.revoked: set[TopicPartition] = set()
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self.joined = asyncio.Event()  # the group has given this worker its partitions
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.ensure(self.topics)
        await self.producer.start()
        await self.control.start()
        control = [TopicPartition(topics.INFERENCE_CONTROL, p)
                   for p in self.control.partitions_for_topic(topics.INFERENCE_CONTROL) or {0}]
        self.control.assign(control)
        await self.control.seek_to_end(*control)
        await self.consumer.start()
        self.consumer.subscribe([t.name for t in self.topics], listener=_Rebalance(self))
        self._tasks = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._follow_control(), name="control"),
            asyncio.create_task(self._commit_periodically(), name="commit"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Serve until asked to stop (or a loop fails), then drain and leave cleanly."""
        await self.start()
        log.info("worker %s serving %s", self.worker_id, ", ".join(self.settings.names))
        stop = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait([stop, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stop and t.exception()]
        await self.shutdown()
        if failed:
            raise failed[0].exception()  # type: ignore[misc]

    async def shutdown(self) -> None:
        """Stop taking requests, let running ones finish, hand the rest back to the group."""
        self._stopping.set()
        self._slot_free.set()
        await self._beat("stopping")
        if self.running:
            log.info("draining %d running requests", len(self.running))
            await asyncio.wait(list(self.running.values()),
                               timeout=self.settings.drain_timeout_s)
        abandoned = list(self.running.values())
        for task in abandoned:
            task.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.commit()
        for client in (self.consumer, self.control, self.producer):
            try:
                await client.stop()
            except Exception:
                log.exception("while stopping %s", type(client).__name__)
        if abandoned:
            log.info("left %d unfinished requests to other workers", len(abandoned))

    # -- loops ------------------------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self.consumer
        while not self._stopping.is_set():
            free = self.engine.capacity - len(self.running)
            if free <= 0:
                consumer.pause(*consumer.assignment())
                self._slot_free.clear()
                await self._slot_free.wait()
                consumer.resume(*consumer.assignment())
                continue
            batch = await consumer.getmany(timeout_ms=200, max_records=free)
            for tp, records in batch.items():
                for record in records:
                    self._accept(tp, record.offset, record.value)

    def _accept(self, tp: TopicPartition, offset: int, value: bytes) -> None:
        if self.offsets.done(tp, offset):
            return  # finished here before a rebalance handed the partition back
        self.offsets.started(tp, offset)
        try:
            req = InferenceRequested.model_validate_json(value)
        except ValidationError as exc:
            log.error("skipping malformed request at %s@%d: %s", tp, offset, exc)
            self.offsets.finished(tp, offset)
            return
        rid = req.request_id
        if rid in self.running:  # redelivered while still running here: it keeps running
            self.positions[rid] = (tp, offset)
            return
        self.positions[rid] = (tp, offset)
        self.running[rid] = asyncio.create_task(self._serve(req))

    async def _serve(self, req: InferenceRequested) -> None:
        rid = req.request_id
        finished = False
        try:
            await self._execute(req)
            finished = True
        except asyncio.CancelledError:
            await self.engine.abort(rid)
            raise
        except Exception:
            log.exception("request %s failed", rid)
            finished = True
        finally:
            position = self.positions.pop(rid, None)
            if finished and position is not None:
                self.offsets.finished(*position)
            self.running.pop(rid, None)
            self._slot_free.set()

    def hand_over(self, lost: set[TopicPartition]) -> None:
        """Stop requests from partitions another worker now owns; it runs them (and bills
        them) from the start, and the gateway skips what its client already has."""
        for rid, (tp, _) in list(self.positions.items()):
            if tp in lost and rid in self.running:
                self.running[rid].cancel()
        self.offsets.forget(list(lost))

    async def _follow_control(self) -> None:
        async for record in self.control:
            try:
                event = decode(record.value)
            except ValidationError:
                continue
            if not isinstance(event, InferenceCancelled):
                continue
            now = time.monotonic()
            self.cancelled[event.request_id] = now
            if event.request_id in self.running:
                await self.engine.abort(event.request_id)
            if len(self.cancelled) > 10_000:
                self.cancelled = {k: t for k, t in self.cancelled.items()
                                  if now - t < CANCEL_MEMORY_S}

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_ms / 1000)
            await self.commit()

    async def commit(self, only: list[TopicPartition] | None = None) -> None:
        due = self.offsets.due()
        if only is not None:
            due = {tp: o for tp, o in due.items() if tp in only}
        if not due:
            return
        try:
            await self.consumer.commit(due)  # type: ignore[arg-type]
            self.offsets.mark_committed(due)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit deferred: %s", exc)

    async def _heartbeat(self) -> None:
        # Not before the group has assigned this worker its partitions: a worker the
        # gateway counts (and `sluice up` waits for) takes requests from then on.
        await self.joined.wait()
        while True:
            await self._beat("ready")
            await asyncio.sleep(self.settings.worker_heartbeat_s)

    async def _lag(self) -> int:
        """Requests waiting in this worker's partitions, as of the last fetch."""
        waiting = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                with contextlib.suppress(Exception):
                    waiting += max(0, high - await self.consumer.position(tp))
        return waiting

    async def _beat(self, status: str) -> None:
        beat = WorkerHeartbeat(
            worker_id=self.worker_id,
            models=self.settings.names,
            task=self.engine.task,  # type: ignore[arg-type]
            max_model_len=self.engine.max_model_len,
            capacity=self.engine.capacity,
            in_flight=len(self.running),
            queue_depth=await self._lag(),
            status=status,  # type: ignore[arg-type]
            interval_s=self.settings.worker_heartbeat_s,
        )
        try:
            delivery = await self.producer.send(topics.WORKERS, beat.encode(),
                                                key=self.worker_id.encode())
            if status == "stopping":
                await delivery
        except KafkaError as exc:
            log.warning("heartbeat not sent: %s", exc)

    # -- one request ------------------------------------------------------------------------

    async def _execute(self, req: InferenceRequested) -> None:
        rid = req.request_id
        run = Execution(req, self.worker_id)
        if run.before_start(cancelled=rid in self.cancelled):
            await self._record(run)
            return
        try:
            self._check_task(req)
            if req.kind == "embedding":
                await self._embed(run)
                return
            prompt_ids = self.engine.prompt_ids(req)
            params = self.engine.sampling_params(req, len(prompt_ids))
            await self._generate(run, prompt_ids, params)
        except BadPrompt as exc:
            await self._refuse(run, InferenceError(
                status=exc.status, code=exc.code, param=exc.param, message=exc.message))
            return
        except ValueError as exc:  # vLLM's own validation of what was asked
            await self._refuse(run, InferenceError(status=400, message=str(exc)))
            return
        except Exception as exc:
            from vllm.v1.engine.exceptions import EngineDeadError

            dead = isinstance(exc, EngineDeadError)
            await self._refuse(run, InferenceError(
                status=503 if dead else 500, type="server_error",
                message="The engine failed while generating."))
            raise

        final = run.finish(len(prompt_ids), cancelled=rid in self.cancelled)
        if final is not None:
            await self._reply(run, final)
        await self._record(run)

    def _check_task(self, req: InferenceRequested) -> None:
        """An embedding model only embeds, and a chat model only generates."""
        embeds = self.engine.task == "embed"
        if (req.kind == "embedding") != embeds:
            what = "embeddings" if req.kind == "embedding" else f"{req.kind} completions"
            raise BadPrompt(f"The model '{req.model}' does not support {what}.",
                            param="model", code="model_not_supported")

    async def _embed(self, run: Execution) -> None:
        req = run.req
        inputs = self.engine.input_ids(req)
        vectors = await self.engine.embed(req.request_id, inputs, req.dimensions)
        for chunk in run.embedded(vectors, sum(map(len, inputs))):
            await self._reply(run, chunk)
        await self._record(run)

    async def _generate(self, run: Execution, prompt_ids: list[int], params: Any) -> None:
        """Run the engine, streaming coalesced chunks if asked."""
        rid = run.req.request_id
        interval = self.settings.chunk_interval_ms / 1000
        aborted = False
        async for out in self.engine.generate(rid, prompt_ids, params):
            run.add(out)
            if out.finished:
                break
            if not aborted and rid in self.cancelled:
                aborted = True
                await self.engine.abort(rid)
            if not aborted and (chunk := run.chunk()) is not None:
                await self._reply(run, chunk)
                # vLLM merges the deltas that arrive meanwhile into one output.
                await asyncio.sleep(interval)

    async def _refuse(self, run: Execution, error: InferenceError) -> None:
        await self._reply(run, run.refuse(error))
        await self._record(run)

    async def _reply(self, run: Execution, chunk: TokenChunk) -> None:
        delivery = await self.producer.send(run.req.reply_topic, chunk.encode(),
                                            key=run.req.request_id.encode())
        if chunk.final:
            await delivery  # the offset is committed only once the answer is on the broker

    async def _record(self, run: Execution) -> None:
        """Publish the request's usage, and wait until the broker has it."""
        event = run.usage()
        delivery = await self.producer.send(topics.USAGE, event.encode(),
                                            key=(event.key_id or "anonymous").encode())
        await delivery


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what is safe before partitions move, so the next owner starts there."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.commit(only=list(revoked))
        self.worker.revoked = set(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.worker.joined.set()
        lost, self.worker.revoked = self.worker.revoked - set(assigned), set()
        if lost:
            self.worker.hand_over(lost)
