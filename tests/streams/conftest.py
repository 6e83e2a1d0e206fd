"""The streams app as a real `sluice streams` process on the session's broker.

Each test gets an app of its own (its own id, so its own consumer group, changelogs and
internal topics) and names of its own (keys, tenants, models). The shared topics
(`sluice.usage`, `sluice.ledger`, ...) carry other tests' events too, which every app
on the broker processes; a test only looks at its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from schemas import topics
from schemas.events import Event, LedgerEntry, PriceSchedule, PriceVersion, UsageRecorded
from tests.conftest import Proc, free_port, wait_until
from tests.events import read_events

MILLION = 1_000_000


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class StreamsApp:
    """One streams app: started, SIGKILLed and started again under the same id."""

    def __init__(self, bootstrap: str, home: Path) -> None:
        self.name = unique("streams")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {"SLUICE_KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HOME": str(home),
                    "SLUICE_STREAMS_ID": self.name, "SLUICE_STREAMS_PORT": str(port),
                    "SLUICE_SESSION_TIMEOUT_S": "6"}
        self.runs = 0
        self.proc: Proc | None = None

    def start(self) -> None:
        """Start it and wait until it has its partitions and has recovered its tables."""
        self.runs += 1
        self.proc = Proc(f"{self.name}-{self.runs}", ["streams"], self.env)
        wait_until(lambda: httpx.get(f"{self.url}/ready", timeout=2).status_code == 200,
                   120, f"{self.name} to be ready", self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(30)

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", timeout=10)
        r.raise_for_status()
        return r.json()

    def totals(self, kind: str, name: str) -> dict[str, dict[str, int]]:
        """A key's (`accounts`) or tenant's (`tenants`) totals by UTC day and month."""
        return self.get(f"/{kind}/{name}")["totals"]  # type: ignore[no-any-return]

    def wait_prices(self, schedule: PriceSchedule) -> None:
        """Until the app bills `schedule.model` with every version of `schedule`."""
        want = len(schedule.versions)
        wait_until(lambda: len(self.get(f"/prices/{schedule.model}")["versions"]) == want,
                   30, f"{self.name} to know the price of {schedule.model}", self.proc)


@pytest.fixture
def streams_app(bootstrap: str, tmp_path: Path) -> Iterator[StreamsApp]:
    app = StreamsApp(bootstrap, tmp_path)
    app.start()
    yield app
    app.stop()


# -- events ---------------------------------------------------------------------------------


async def publish_async(bootstrap: str, topic: str, events: Iterable[tuple[bytes, Event]],
                        pace_s: float = 0.0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    try:
        pending = []
        for key, event in events:
            pending.append(await producer.send(topic, event.encode(), key=key))
            if pace_s:
                await asyncio.sleep(pace_s)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def publish(bootstrap: str, topic: str, events: Iterable[tuple[bytes, Event]]) -> None:
    asyncio.run(publish_async(bootstrap, topic, events))


def publish_usage(bootstrap: str, usage: Iterable[UsageRecorded]) -> None:
    """Usage as workers publish it: keyed by key_id."""
    publish(bootstrap, topics.USAGE, (((u.key_id or "").encode(), u) for u in usage))


def price_schedule(model: str, *versions: tuple[float, int, int, int]) -> PriceSchedule:
    """`versions`: (effective_from, input, output, cached) micro-dollars per million."""
    return PriceSchedule(model=model, versions=tuple(
        PriceVersion(version=i + 1, effective_from=at, input_micros_per_million=inp,
                     output_micros_per_million=out, cached_micros_per_million=cached)
        for i, (at, inp, out, cached) in enumerate(versions)))


# -- what the totals and the ledger must be, computed independently of streams/ ------------


def cost(tokens: int, micros_per_million: int) -> int:
    """Integer micro-dollars, rounded half up (docs/ledger.md)."""
    return (tokens * micros_per_million + MILLION // 2) // MILLION


def expected_entry(usage: UsageRecorded, schedule: PriceSchedule) -> dict[str, Any]:
    version = max((v for v in schedule.versions if v.effective_from <= usage.ts),
                  key=lambda v: v.effective_from)
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    inp = cost(usage.prompt_tokens - cached, version.input_micros_per_million)
    out = cost(usage.completion_tokens, version.output_micros_per_million)
    cac = cost(cached, version.cached_micros_per_million)
    return {"event_id": f"ledger:{usage.event_id}", "usage_event_id": usage.event_id,
            "key_id": usage.key_id, "tenant": usage.tenant, "model": usage.model,
            "price_version": version.version, "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens, "cached_tokens": cached,
            "input_micros": inp, "output_micros": out, "cached_micros": cac,
            "cost_micros": inp + out + cac}


def expected_totals(usage: Iterable[UsageRecorded], schedules: dict[str, PriceSchedule],
                    by: str) -> dict[str, dict[str, Counter[str]]]:
    """{key_id or tenant: {day or month: totals}} for usage counted once per event id."""
    out: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    seen: set[str] = set()
    for u in usage:
        if u.event_id in seen:
            continue
        seen.add(u.event_id)
        entry = expected_entry(u, schedules[u.model])
        name = getattr(u, by)
        day = dt.datetime.fromtimestamp(u.ts, dt.UTC)
        for period in (day.strftime("%Y-%m-%d"), day.strftime("%Y-%m")):
            out[name][period].update(
                requests=1, prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens, cached_tokens=entry["cached_tokens"],
                cost_micros=entry["cost_micros"])
    return out


def ledger_for(bootstrap: str, usage_ids: set[str], timeout: float = 60
               ) -> list[LedgerEntry]:
    """Every ledger record (copies included) for the usage events `usage_ids`, read once
    each of them has one."""
    def mine(events: list[Any]) -> list[LedgerEntry]:
        return [e for e in events
                if isinstance(e, LedgerEntry) and e.usage_event_id in usage_ids]

    events = read_events(bootstrap, topics.LEDGER,
                         lambda evs: {e.usage_event_id for e in mine(evs)} >= usage_ids,
                         timeout)
    return mine(events)
