"""A worker killed with SIGKILL mid-request: its requests complete on another worker."""

from __future__ import annotations

import asyncio
import time

import openai

from schemas import topics
from schemas.events import UsageRecorded
from tests.conftest import MODEL, Gateway, Proc, start_worker
from tests.events import read_events, read_events_async


def _never(events: object) -> bool:
    return False


def test_killed_worker_requests_complete_elsewhere(
    bootstrap: str, stack_env: dict[str, str], gateway: Gateway, worker: Proc, api_key: str
) -> None:
    doomed = start_worker("worker-doomed", stack_env, gateway, expect=2)
    try:
        async def run() -> list[tuple[str, str]]:
            client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=api_key,
                                        max_retries=0, timeout=240)

            async def one(i: int) -> tuple[str, str]:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL, temperature=0, max_tokens=160,
                    messages=[{"role": "user", "content": f"Tell a long story number {i}."}])
                return raw.headers["x-request-id"], raw.parse().choices[0].message.content

            async def kill_when_busy() -> None:
                # Kill once the doomed worker has requests of its own running.
                for _ in range(600):
                    beats = await read_events_async(bootstrap, topics.WORKERS, _never, 0.3)
                    mine = [b for b in beats if getattr(b, "worker_id", "") == "worker-doomed"]
                    if mine and mine[-1].in_flight > 0:  # type: ignore[attr-defined]
                        doomed.kill()
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError("the doomed worker never got a request")

            try:
                tasks = [asyncio.create_task(one(i)) for i in range(12)]
                await kill_when_busy()
                return await asyncio.gather(*tasks)
            finally:
                await client.close()

        started = time.monotonic()
        answers = asyncio.run(run())
        assert not doomed.alive()
        assert len(answers) == 12 and all(text for _, text in answers)
        ids = {rid for rid, _ in answers}
        usage = [e for e in read_events(bootstrap, topics.USAGE,
                                        lambda es: ids <= {getattr(e, "request_id", None)
                                                           for e in es}, timeout=60)
                 if isinstance(e, UsageRecorded) and e.request_id in ids]
        # Every request was answered, and those the doomed worker had running when it
        # died (it had some) were answered by the survivor.
        assert {u.request_id for u in usage} == ids
        assert sum(u.worker_id == "worker-doomed" for u in usage) < 12
        assert any(u.worker_id == "worker" for u in usage)
        assert time.monotonic() - started < 240
    finally:
        doomed.stop(10)
