"""Streams: usage events per second through one worker, and how fresh its totals are.

One run starts the embedded broker (Tansu) and then

1. **throughput** — publishes a backlog of UsageRecorded events (tenants with several keys
   each, several priced models), starts one `sluice streams` worker on it and times it
   from its first ledger entry until every event has its ledger entry and has reached its
   tenant's totals (one tenant_totals changelog record per event). Then it checks that
   the per-key and per-tenant totals are exactly the sums of the events;
2. **freshness** — with the worker caught up, publishes usage at a steady rate and polls
   `/accounts/{key}` for a few probe keys; an event's freshness is the time from just
   before its publication to the first poll that counts it (polls are 20 ms apart, so
   this overstates it by up to that much).

Numbers go to docs/benchmarks.md. Run: `python -m bench.streams [--events N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import Child, broker, cpu, free_port, sluice
from bench.report import write_section
from broker import Broker, SluiceSettings
from schemas import topics
from schemas.events import PriceSchedule, PriceVersion, UsageRecorded
from streams.settings import Settings as StreamsSettings

TARGET_EVENTS_PER_S = 5_000
TARGET_FRESHNESS_P95_S = 1.0
POLL_S = 0.02
PRICES = {  # micro-dollars per million input, output and cached tokens
    "bench-small": (150_000, 600_000, 75_000),
    "bench-medium": (500_000, 1_500_000, 250_000),
    "bench-large": (3_000_000, 15_000_000, 1_500_000),
}


RUN = f"{os.getpid():x}"  # in names, so runs on one broker (--bootstrap) do not mix


def _usage(i: int, ts: float, tenants: int, keys_per_tenant: int) -> UsageRecorded:
    tenant = f"bench-{RUN}-t{(i * 7919) % tenants:03d}"
    key = f"{tenant}-k{i % keys_per_tenant}"
    prompt = 50 + i % 900
    return UsageRecorded(ts=ts, request_id=f"r{i}", model=list(PRICES)[i % len(PRICES)],
                         key_id=key, tenant=tenant, worker_id="bench", status="completed",
                         prompt_tokens=prompt, completion_tokens=10 + i % 300,
                         cached_tokens=prompt // 2 if i % 5 == 0 else 0,
                         latency_ms=300.0 + i % 1000)


def _cost(u: UsageRecorded) -> int:
    def part(tokens: int, rate: int) -> int:
        return (tokens * rate + 500_000) // 1_000_000
    inp, out, cached = PRICES[u.model]
    fresh = u.prompt_tokens - u.cached_tokens
    return part(fresh, inp) + part(u.completion_tokens, out) + part(u.cached_tokens, cached)


async def _publish(producer: AIOKafkaProducer, events: list[UsageRecorded]) -> None:
    pending = []
    for event in events:
        pending.append(await producer.send(topics.USAGE, event.encode(),
                                           key=(event.key_id or "").encode()))
        if len(pending) >= 10_000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def _count(consumer: AIOKafkaConsumer, bootstrap: str, topic: str) -> int:
    """How many records `topic` holds, from its end offsets as the broker's profile reads
    them (Tansu under-reports them by all but the first record of the last batch)."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer.topics()  # refresh metadata: the topic may be new
        partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        return 0
    ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    broker = Broker.of(SluiceSettings(kafka_bootstrap=bootstrap))
    return sum((await broker.true_ends(dict(ends))).values())


class _Streams:
    """One `sluice streams` worker; `start` waits until it prices every bench model."""

    def __init__(self, bootstrap: str, home: str) -> None:
        self.app_id, port = f"bench-streams-{RUN}", free_port()
        self.env = {"SLUICE_KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HOME": home,
                    "SLUICE_STREAMS_ID": self.app_id, "SLUICE_STREAMS_PORT": str(port)}
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
        self.child: Child | None = None
        self.runs = 0

    def check(self) -> None:
        assert self.child is not None
        self.child.check()

    async def start(self) -> None:
        self.runs += 1
        self.child = sluice(f"streams-{self.runs}", ["streams"], self.env)

        async def ready() -> bool:
            self.check()
            with contextlib.suppress(httpx.HTTPError):
                return all([(await self.http.get(f"/prices/{m}")).status_code == 200
                            for m in PRICES])
            return False

        await _until(ready, 120, "the streams worker")

    async def stop(self) -> None:
        if self.child is not None:
            await asyncio.to_thread(self.child.stop)
            self.child = None


async def _publish_prices(producer: AIOKafkaProducer) -> None:
    for model, (inp, out, cached) in PRICES.items():
        schedule = PriceSchedule(model=model, versions=(PriceVersion(
            version=1, effective_from=0, input_micros_per_million=inp,
            output_micros_per_million=out, cached_micros_per_million=cached),))
        await producer.send_and_wait(topics.PRICES, schedule.encode(), key=model.encode())


async def _throughput(offsets: AIOKafkaConsumer, bootstrap: str, worker: _Streams,
                      events: list[UsageRecorded], before: int) -> dict[str, float]:
    """Times the worker through the backlog `events` (published after the ledger held
    `before` entries): until every event has its ledger entry, then until every tenant's
    totals count all of its events (polled every 0.1 s from then on)."""
    n = len(events)
    day = datetime.fromtimestamp(events[0].ts, UTC).strftime("%Y-%m-%d")
    requests = Counter(e.tenant for e in events)
    first = 0.0
    at_first = ledger = 0
    deadline = time.monotonic() + 900
    report = time.monotonic() + 5
    while ledger < n:
        worker.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"stuck at {ledger} ledger entries")
        if time.monotonic() > report:
            print(f"  {ledger:,} ledger entries", flush=True)
            report = time.monotonic() + 5
        ledger = await _count(offsets, bootstrap, topics.LEDGER) - before
        if ledger and not first:
            first, at_first = time.monotonic(), ledger
        await asyncio.sleep(0.05)
    ledger_done = time.monotonic()
    while requests:
        worker.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"stuck with {len(requests)} tenants behind")
        for tenant, want in list(requests.items()):
            got = (await worker.http.get(f"/tenants/{tenant}")).json()["totals"]
            if got.get(day, {}).get("requests") == want:
                del requests[tenant]
        await asyncio.sleep(0.1)
    done = time.monotonic()
    print("checking totals", flush=True)
    await _check_totals(worker.http, events)
    return {"ledger_per_s": (n - at_first) / (ledger_done - first),
            "totals_per_s": (n - at_first) / (done - first)}


async def _check_totals(http: httpx.AsyncClient, events: list[UsageRecorded]) -> None:
    """Per-key and per-tenant day totals equal the sums of the events, exactly."""
    want_keys: dict[str, Counter[str]] = defaultdict(Counter)
    want_tenants: dict[str, Counter[str]] = defaultdict(Counter)
    day = datetime.fromtimestamp(events[0].ts, UTC).strftime("%Y-%m-%d")
    for e in events:
        for want, name in ((want_keys, e.key_id), (want_tenants, e.tenant)):
            want[name or ""].update(requests=1, prompt_tokens=e.prompt_tokens,
                                    completion_tokens=e.completion_tokens,
                                    cached_tokens=e.cached_tokens, cost_micros=_cost(e))
    for key, want in want_keys.items():
        got = (await http.get(f"/accounts/{key}")).json()["totals"][day]
        if Counter(got) != want:
            raise AssertionError(f"key {key}: {got} != {dict(want)}")
    for tenant, want in want_tenants.items():
        got = (await http.get(f"/tenants/{tenant}")).json()["totals"][day]
        if Counter(got) != want:
            raise AssertionError(f"tenant {tenant}: {got} != {dict(want)}")


async def _freshness(bootstrap: str, http: httpx.AsyncClient, rate: float, seconds: float,
                     tenants: int, keys: int, probes: int = 8) -> dict[str, float]:
    """Publishes `rate` events/s for `seconds`; one in ten goes to a probe key, whose
    totals are polled. Returns freshness percentiles in seconds."""
    probe_keys = [f"bench-{RUN}-probe-k{i}" for i in range(probes)]
    sent: dict[str, list[float]] = {k: [] for k in probe_keys}
    counted: dict[str, int] = dict.fromkeys(probe_keys, 0)
    lags: list[float] = []
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    finished = asyncio.Event()

    async def poll() -> None:
        while not finished.is_set() or any(counted[k] < len(sent[k]) for k in probe_keys):
            replies = await asyncio.gather(*(http.get(f"/accounts/{k}") for k in probe_keys))
            now = time.time()
            for key, reply in zip(probe_keys, replies, strict=True):
                seen = reply.json()["totals"].get(day, {}).get("requests", 0)
                lags.extend(now - t for t in sent[key][counted[key]:seen])
                counted[key] = max(counted[key], seen)
            await asyncio.sleep(POLL_S)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    poller = asyncio.create_task(poll())
    try:
        start, total = time.monotonic(), int(rate * seconds)
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if i % 10 == 0:
                key = probe_keys[(i // 10) % probes]
                event = UsageRecorded(request_id=f"p{i}", model="bench-small", key_id=key,
                                      tenant=f"bench-{RUN}-probe", worker_id="bench",
                                      status="completed", prompt_tokens=100,
                                      completion_tokens=20)
                sent[key].append(time.time())
                await producer.send(topics.USAGE, event.encode(), key=key.encode())
            else:
                event = _usage(i, time.time(), tenants, keys)
                await producer.send(topics.USAGE, event.encode(),
                                    key=(event.key_id or "").encode())
        await producer.flush()
        finished.set()
        await asyncio.wait_for(poller, 60)
    finally:
        poller.cancel()
        await producer.stop()
    lags.sort()
    return {"samples": float(len(lags)),
            "p50_s": statistics.median(lags),
            "p95_s": lags[int(0.95 * (len(lags) - 1))],
            "p99_s": lags[int(0.99 * (len(lags) - 1))],
            "max_s": lags[-1]}


async def run(bootstrap: str, n: int, tenants: int, keys: int, rate: float, seconds: float
              ) -> tuple[dict[str, float], dict[str, float]]:
    await Broker.of(SluiceSettings(kafka_bootstrap=bootstrap)).ensure()
    now = time.time()
    events = [_usage(i, now, tenants, keys) for i in range(n)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks=1,
                                max_batch_size=256 * 1024)
    offsets = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await producer.start()
    await offsets.start()
    home = tempfile.TemporaryDirectory()
    worker = _Streams(bootstrap, home.name)
    try:
        # The worker learns the prices first and stops: restarted, it recovers them from
        # its changelog before it consumes any usage, so the backlog is priced throughout.
        await _publish_prices(producer)
        await worker.start()
        await worker.stop()
        print(f"publishing {n} usage events", flush=True)
        await _publish(producer, events)
        before = await _count(offsets, bootstrap, topics.LEDGER)
        await worker.start()
        print("throughput", flush=True)
        throughput = await _throughput(offsets, bootstrap, worker, events, before)
        print(f"  {throughput}", flush=True)
        print(f"freshness at {rate:.0f} events/s", flush=True)
        freshness = await _freshness(bootstrap, worker.http, rate, seconds, tenants, keys)
        print(f"  {freshness}", flush=True)
    finally:
        await worker.stop()
        await worker.http.aclose()
        await offsets.stop()
        await producer.stop()
        home.cleanup()
    return throughput, freshness


async def _until(done: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def render(throughput: dict[str, float], freshness: dict[str, float], n: int, tenants: int,
           keys: int, rate: float, seconds: float) -> str:
    ok = "meets" if throughput["totals_per_s"] >= TARGET_EVENTS_PER_S else "misses"
    fresh_ok = "meets" if freshness["p95_s"] <= TARGET_FRESHNESS_P95_S else "misses"
    return "\n".join([
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {cpu()}, {os.cpu_count()} cores; "
        "one `sluice streams` worker (Faust, in-memory tables with changelogs) on the "
        "embedded Tansu broker, both on this machine.",
        "",
        f"**Throughput.** A backlog of {n:,} UsageRecorded events ({tenants} tenants x "
        f"{keys} keys, {len(PRICES)} priced models) published before the worker starts, "
        "timed from its first ledger entry until every event has its ledger entry and is in "
        "its tenant's totals. Afterwards every key's and tenant's day totals were checked "
        "against the sums of the events: exact.",
        "",
        "| stage | events/s |",
        "|---|---|",
        f"| priced into the ledger and key totals (`bill_usage`) | "
        f"{throughput['ledger_per_s']:,.0f} |",
        f"| ... and in the tenant totals (`total_tenants`) | "
        f"{throughput['totals_per_s']:,.0f} |",
        "",
        f"**Freshness.** With the worker caught up, {rate:,.0f} usage events/s for "
        f"{seconds:.0f} s; one in ten goes to one of 8 probe keys whose `/accounts/{{key}}` "
        f"totals are polled every {POLL_S * 1000:.0f} ms. Freshness is the time from just "
        "before an event is published to the first poll that counts it "
        f"({freshness['samples']:.0f} events).",
        "",
        "| p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|",
        f"| {freshness['p50_s'] * 1000:.0f} | {freshness['p95_s'] * 1000:.0f} "
        f"| {freshness['p99_s'] * 1000:.0f} | {freshness['max_s'] * 1000:.0f} |",
        "",
        f"Targets: at least {TARGET_EVENTS_PER_S:,} usage events/s per worker ({ok}); an "
        f"event counts in the totals within {TARGET_FRESHNESS_P95_S:.0f} s p95 ({fresh_ok}).",
        "",
        "The worker is bound by one core, so the rate follows that core's speed. Usage is "
        "billed in batches taken within `SLUICE_STREAMS_BATCH_WAIT_S` "
        f"({StreamsSettings().streams_batch_wait_s:g} s), and a key's "
        "account is written once per batch. On 2026-11-30, on an AMD EPYC with AVX-512, "
        "alternating runs measured 5,100-5,700 events/s into the tenant totals with 0.02 s "
        "against 7,600-8,400 with 0.1 s (a short batch holds few events per key, so "
        "nearly every event wrote its account). On 2026-11-22, with 0.02 s, "
        "another machine of this kind (AMD EPYC with AVX2 only) measured 2,028 events/s "
        "into the ledger and 1,580 into the tenant totals. Where the time went there "
        "(py-spy on the worker during the backlog): 97% of a core, Tansu about 30% of the "
        "other; billing itself (`bill_usage`) about 27% of the samples, 11% of them writing "
        "account values (the table's changelog records); the rest Faust's path for each "
        "message: the consumer thread decoding fetches, the conductor and stream, the "
        "producer's buffer and commits.",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=60_000, help="backlog size")
    p.add_argument("--tenants", type=int, default=50)
    p.add_argument("--keys", type=int, default=8, help="keys per tenant")
    p.add_argument("--rate", type=float, default=1_000, help="events/s for freshness")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--bootstrap", help="an existing broker (default: start Tansu)")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    a = p.parse_args()

    def measure(bootstrap: str) -> tuple[dict[str, float], dict[str, float]]:
        return asyncio.run(run(bootstrap, a.events, a.tenants, a.keys, a.rate, a.seconds))

    if a.bootstrap:
        throughput, freshness = measure(a.bootstrap)
    else:
        with broker("streams-broker") as bootstrap:
            throughput, freshness = measure(bootstrap)
    text = render(throughput, freshness, a.events, a.tenants, a.keys, a.rate, a.seconds)
    if not a.no_write:
        write_section("streams", "Streams: usage throughput and freshness", text)
    print(text)


if __name__ == "__main__":
    main()
