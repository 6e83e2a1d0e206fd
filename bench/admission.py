"""Admission by leases: what a request pays with a lease in hand, and for a new lease.

One run starts the embedded broker and one `sluice streams` worker, and drives the
gateway's own `LeaseBook` in this process (the gateway's code, its Kafka clients and
settings), without an engine behind it:

1. **in hand** — admit-and-release cycles on a busy key. Most are served from the lease
   the gateway holds; the ones that had to fetch a new lease are counted apart.
2. **fetch** — lease round trips (gateway → `sluice.leases` → limiter agent → reply
   topic → gateway), one at a time over many keys, then 16 at once, then one at a time
   after the limiter has been idle (it then polls the broker with its long wait).
3. **slot hand-back** — a key allowed one request at a time, admitted through two
   gateways (two `LeaseBook`s, each with its own reply topic) in turn, each request
   ended before the next: how long a request's end waits for its slot to be on the
   limiter's topic, and what the next request, at the other gateway, pays for the slot.

One at a time means two ways, taken in turn: each request after a random pause of up to
`GAP_MS` (requests of independent callers arrive at any moment), and each as soon as the
last grant is in. The second phase-locks with the limiter's polling: its consumer asks
the broker again the moment the last request reached it, so the next request lands just
after the broker's first look and waits for a later one (Tansu looks at halvings of the
wait, not when data arrives). It is reported, not judged against the target.

Numbers go to docs/benchmarks.md. Run: `python -m bench.admission [--fetches N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition

from bench.common import broker, cpu, free_port, percentile, sluice, wait_http
from bench.report import write_section
from broker import Broker
from gateway.exceptions import RateLimited
from gateway.keys import Principal
from gateway.leases import LeaseBook
from gateway.settings import Settings as GatewaySettings
from schemas import topics
from schemas.events import LeaseRequested
from schemas.tiers import Budgets, Limits

TARGET_IN_HAND_P50_MS = 0.1
TARGET_FETCH_P99_MS = 10.0
GATEWAY_ID = "bench-admission"
GAP_MS = 8.0  # a random pause before each request: over two of the limiter's fetch cycles
IDLE_S = 2.5  # past the limiter's busy spell (`Profile.busy_s`) and its next poll
LIMITS = Limits(requests_per_minute=10_000_000, requests_per_hour=10**9,
                requests_per_day=10**9, tokens_per_minute=10**12, burst=10_000_000,
                concurrent=10_000)


def _principal(i: int) -> Principal:
    return Principal(f"bench-key-{i}", "bench", False, LIMITS, Budgets())


async def _hand_backs(books: tuple[LeaseBook, LeaseBook], n: int
                      ) -> tuple[list[float], list[float], int]:
    """`n` requests of a one-slot key, through each gateway in turn: the next request's
    admission times, the hand-back times (release until the limiter's topic has it),
    and how many were refused."""
    principal = Principal("bench-one-slot", "bench", False,
                          LIMITS.model_copy(update={"concurrent": 1}), Budgets())
    admits, hand_backs, refused = [], [], 0
    for i in range(n):
        t0 = time.perf_counter()
        try:
            admitted = await books[i % 2].admit(principal, 600)
        except RateLimited:
            refused += 1
            continue
        t1 = time.perf_counter()
        admitted.release()
        await admitted.settled(2.0)
        admits.append((t1 - t0) * 1000)
        hand_backs.append((time.perf_counter() - t1) * 1000)
    return admits, hand_backs, refused


async def _in_hand(book: LeaseBook, cycles: int) -> tuple[list[float], int]:
    """Admit and release on one key; times of admissions served from the lease in hand."""
    principal = _principal(0)
    held, fetched = [], 0
    for _ in range(cycles):
        before = book.leases.get(principal.key_id)
        renewal = before.last_renewal if before else None
        t0 = time.perf_counter()
        admitted = await book.admit(principal, 600)
        dt = time.perf_counter() - t0
        admitted.release()
        if book.leases[principal.key_id].last_renewal == renewal:
            held.append(dt * 1000)
        else:
            fetched += 1
    return held, fetched


async def _fetches(book: LeaseBook, n: int, parallel: int, hops: list[tuple[float, float]]
                   | None = None, gap_ms: float = 0.0, first: int = 0) -> list[float]:
    """Round-trip times of `n` lease requests, `parallel` at a time, over many keys (from
    the `first`-th on), each after a random pause of up to `gap_ms`; with `hops`, also each
    trip's two legs (to the limiter's grant, and back)."""
    times: list[float] = []

    async def lane(lane_id: int) -> None:
        for i in range(lane_id, n, parallel):
            if gap_ms:
                await asyncio.sleep(random.uniform(0, gap_ms) / 1000)
            p = _principal(1 + (first + i) % 256)
            req = LeaseRequested(key_id=p.key_id, tenant=p.tenant, gateway_id=GATEWAY_ID,
                                 reply_topic=topics.replies(GATEWAY_ID).name, requests=1,
                                 tokens=600, tokens_min=600, slots=0, held_slots=0,
                                 urgent=True, limits=p.limits, budgets=p.budgets)
            t0 = time.perf_counter()
            grant = await book._round_trip(req)
            times.append((time.perf_counter() - t0) * 1000)
            if hops is not None:
                hops.append(((grant.granted_at - req.ts) * 1000,
                             (time.time() - grant.granted_at) * 1000))

    await asyncio.gather(*(lane(i) for i in range(parallel)))
    return times


async def _one_at_a_time(book: LeaseBook, n: int, legs: list[tuple[float, float]]
                         ) -> tuple[list[float], list[float]]:
    """`n` lease fetches after random pauses and `n` back to back, taken in turn (so both
    meet the same partition sizes and machine load); the legs are the first kind's."""
    paused: list[float] = []
    back_to_back: list[float] = []
    for i in range(n):  # over all keys, and so all partitions, as `_fetches` goes
        paused += await _fetches(book, 1, 1, legs, GAP_MS, first=2 * i)
        back_to_back += await _fetches(book, 1, 1, first=2 * i + 1)
    return paused, back_to_back


async def _after_idle(book: LeaseBook, n: int, idle_s: float) -> list[float]:
    """Lease fetches, each after `idle_s` without any: the limiter is polling slowly."""
    times: list[float] = []
    for _ in range(n):
        await asyncio.sleep(idle_s)
        times += await _fetches(book, 1, 1)
    return times


async def _broker_trips(broker: Broker, n: int, fetch_wait_ms: int, relayed: bool,
                        gap_ms: float) -> list[float]:
    """The floor under every leg: one message from a producer to a waiting consumer, each
    after a random pause of up to `gap_ms`. With `relayed`, the floor under a lease fetch:
    the message is relayed back by a second consumer with a producer of its own, as the
    limiter does, but without its work."""
    ping, pong = topics.TopicSpec("sluice.bench.ping", 1), topics.TopicSpec("sluice.bench.pong", 1)
    await broker.ensure([ping, pong])
    producer, relay = broker.producer(), broker.reader(fetch_wait_ms)
    clients: list[Any] = [producer, relay]
    readers = [(relay, ping)]
    if relayed:
        replier, back = broker.producer(), broker.reader(fetch_wait_ms)
        clients += [replier, back]
        readers.append((back, pong))
    for client in clients:
        await client.start()
    for consumer, spec in readers:
        tp = TopicPartition(spec.name, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)

    async def relaying() -> None:
        while True:
            for records in (await relay.getmany(timeout_ms=1000)).values():
                for _ in records:
                    await replier.send(pong.name, b"pong")

    task = asyncio.create_task(relaying()) if relayed else None
    arrival = back if relayed else relay
    times = []
    try:
        for _ in range(n):
            await asyncio.sleep(random.uniform(0, gap_ms) / 1000)
            t0 = time.perf_counter()
            await producer.send(ping.name, b"ping")
            while not await arrival.getmany(timeout_ms=1000):
                pass
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        if task is not None:
            task.cancel()
        for client in reversed(clients):
            await client.stop()
    return times


async def run(bootstrap: str, fetches: int, cycles: int, idle: int, hand_back_n: int
              ) -> dict[str, object]:
    settings = GatewaySettings(kafka_bootstrap=bootstrap, gateway_id=GATEWAY_ID)
    broker = Broker.of(settings)
    await broker.ensure()  # the reply topics are the router's own
    producer = broker.producer()
    replies = broker.replies(GATEWAY_ID)
    other = broker.replies(f"{GATEWAY_ID}-b")
    await producer.start()
    await replies.start()
    await other.start()
    router = asyncio.create_task(replies.run())
    other_router = asyncio.create_task(other.run())
    wait = broker.profile.replies_wait_ms
    hops = await _broker_trips(broker, 500, wait, relayed=False, gap_ms=GAP_MS)
    round_trips = await _broker_trips(broker, 500, wait, relayed=True, gap_ms=GAP_MS)
    book, book_b = (LeaseBook(producer, router_of, gateway_id,
                              timeout=settings.lease_timeout_s, lease_ttl=settings.lease_ttl_s,
                              max_requests=settings.lease_max_requests)
                    for router_of, gateway_id in ((replies, GATEWAY_ID),
                                                  (other, f"{GATEWAY_ID}-b")))
    try:
        await _fetches(book, 300, 4)  # warm up every partition's path
        legs: list[tuple[float, float]] = []
        sequential, back_to_back = await _one_at_a_time(book, fetches, legs)
        parallel = await _fetches(book, fetches, 16)
        held, fetched = await _in_hand(book, cycles)
        after_idle = await _after_idle(book, idle, IDLE_S)
        slot_admits, hand_backs, refused = await _hand_backs((book, book_b), hand_back_n)
    finally:
        router.cancel()
        other_router.cancel()
        await replies.stop()
        await other.stop()
        await producer.stop()
    return {"sequential": sequential, "back_to_back": back_to_back, "parallel": parallel,
            "held": held,
            "after_idle": after_idle,
            "to_limiter": [leg[0] for leg in legs], "from_limiter": [leg[1] for leg in legs],
            "broker_hop": hops, "broker_round_trip": round_trips,
            "fetch_wait_ms": wait,
            "fetched": fetched, "cycles": cycles,
            "slot_admits": slot_admits, "hand_backs": hand_backs, "refused": refused}


def _row(name: str, values: list[float]) -> str:
    return (f"| {name} | {len(values)} | {statistics.median(values):.3f} | "
            f"{percentile(values, 0.99):.3f} | {max(values):.3f} |")


def render(r: dict[str, object]) -> str:
    held: list[float] = r["held"]  # type: ignore[assignment]
    seq: list[float] = r["sequential"]  # type: ignore[assignment]
    par: list[float] = r["parallel"]  # type: ignore[assignment]
    in_hand_p50 = statistics.median(held)
    fetch_p99 = percentile(seq, 0.99)
    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    return "\n".join([
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {cpu()}: embedded broker (Tansu), "
        "one `sluice streams` worker, the gateway's `LeaseBook` driven in-process.",
        "",
        "| measurement | n | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        _row("admission, lease in hand", held),
        _row(f"lease fetch, one at a time (pauses of 0-{GAP_MS:g} ms)", seq),
        _row("— leg 1: request to grant", r["to_limiter"]),  # type: ignore[arg-type]
        _row("— leg 2: grant to gateway", r["from_limiter"]),  # type: ignore[arg-type]
        _row("lease fetch, one at a time (back to back)", r["back_to_back"]),  # type: ignore[arg-type]
        _row("lease fetch, 16 at once", par),
        _row(f"lease fetch after {IDLE_S:g} s without any", r["after_idle"]),  # type: ignore[arg-type]
        _row(f"one broker hop (produce → consume, pauses of 0-{GAP_MS:g} ms)",
             r["broker_hop"]),  # type: ignore[arg-type]
        _row("two broker hops (relayed back, no limiter, same pauses)",
             r["broker_round_trip"]),  # type: ignore[arg-type]
        "",
        f"Of {r['cycles']} admissions on one busy key, {r['fetched']} fetched a new lease "
        f"(the lease grows to `SLUICE_LEASE_MAX_REQUESTS` requests for a hot key).",
        "",
        "**A finished request's slot.** A key allowed one request at a time, "
        f"{len(r['hand_backs']) + r['refused']} requests through two gateways in turn, "  # type: ignore[arg-type]
        "each ended before the next began:",
        "",
        "| measurement | n | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        _row("request end → slot on the limiter's topic (hand-back)",
             r["hand_backs"]),  # type: ignore[arg-type]
        _row("next request at the other gateway: admission (a slot round trip)",
             r["slot_admits"]),  # type: ignore[arg-type]
        "",
        f"Refused: {r['refused']} (a slot handed back is never refused to the next request). "
        "A slot is handed back at its request's end, before the client sees it, unless "
        "more than half the key's slots were unheld at the limiter's last answer; then "
        "the gateway keeps it for the key's next request and the periodic sweep hands idle "
        "ones back.",
        "",
        f"- Admission with a lease in hand: p50 {in_hand_p50 * 1000:.1f} µs "
        f"(target ≤ {TARGET_IN_HAND_P50_MS} ms: {verdict(in_hand_p50 <= TARGET_IN_HAND_P50_MS)}).",
        f"- Lease fetch: p99 {fetch_p99:.2f} ms "
        f"(target ≤ {TARGET_FETCH_P99_MS:g} ms: {verdict(fetch_p99 <= TARGET_FETCH_P99_MS)}).",
        "",
        "A lease fetch is two broker hops (gateway → limiter → gateway). The embedded broker "
        "does not answer a waiting fetch when data arrives: it looks at the start of the "
        "consumer's wait and at halvings of what is left, and each look costs more the more "
        "partitions the fetch holds, so each hop costs up to about that wait even when idle "
        f"(two hops through {r['fetch_wait_ms']} ms consumers of one partition each, with "
        "nothing in between: "
        f"{percentile(r['broker_round_trip'], 0.99):.2f} ms at p99); "  # type: ignore[arg-type]
        "Apache Kafka answers as soon as data arrives. While it waits for a grant the "
        "gateway polls its reply topic with a 1 ms wait (the `tansu` profile's "
        "`replies_busy_wait_ms`; "
        "its reply topics rotate every 250 replies, so that reading them fits in it). "
        "While urgent lease requests come in (a caller waits on each, as on those above) the "
        "limiter polls with a 1 ms wait and fetches lease requests alone, the app's other "
        "topics once every 50 ms (`streams_urgent_wait_ms`, "
        "`streams_others_every_ms`): 8 partitions a fetch instead of 67. While only "
        "fetches ahead of need come in it polls everything with a 3 ms wait "
        "(`streams_wait_ms`), and after a second without any every "
        "`streams_idle_wait_ms` (20 ms), which saves a third of a core but makes "
        "the first fetch after a quiet spell slower (the row above; on Apache Kafka the "
        "long wait costs nothing). A key in use does not wait for fetches at all: its next "
        "lease is fetched in the background when the current one runs short, so its "
        "requests pay the in-hand cost.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetches", type=int, default=2000)
    parser.add_argument("--cycles", type=int, default=20000)
    parser.add_argument("--idle", type=int, default=30)
    parser.add_argument("--hand-backs", type=int, default=400)
    args = parser.parse_args()
    with broker("admission-broker") as bootstrap, tempfile.TemporaryDirectory() as home:
        port = free_port()
        streams = sluice("admission-streams", ["streams"], {
            "SLUICE_KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HOME": home,
            "SLUICE_STREAMS_PORT": str(port)})
        try:
            wait_http(f"http://127.0.0.1:{port}/ready", streams)
            result = asyncio.run(run(bootstrap, args.fetches, args.cycles, args.idle,
                                     args.hand_backs))
        finally:
            streams.stop()
    body = render(result)
    write_section("admission", "Admission by leases", body)
    print(body)


if __name__ == "__main__":
    main()
