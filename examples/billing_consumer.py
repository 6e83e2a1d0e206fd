"""Print an invoice per tenant from Sluice's ledger topic.

An example for billing teams: a plain aiokafka consumer that depends on nothing from
Sluice. The ledger's format is documented in docs/ledger.md and its JSON Schema in
docs/ledger.schema.json.

It reads `sluice.ledger` from the beginning, keeps one entry per `event_id` (an entry
may be delivered more than once; copies are identical), and when it has caught up
with the end of the topic as it was at start, it prints one invoice per tenant:
a line per model with requests, tokens and cost. With --follow it keeps reading and
prints the invoices again whenever new entries have arrived.

    python examples/billing_consumer.py --bootstrap localhost:9092 --month 2026-11
    python examples/billing_consumer.py --since 2026-11-01 --until 2026-11-15 --tenant acme
    python examples/billing_consumer.py --json      # one JSON document instead of text

Amounts are integer micro-dollars on the wire and are added up as integers; dollars
are only formatted at the end, so the totals are exact.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

MICROS_PER_DOLLAR = 1_000_000


@dataclass
class Line:
    """One model on one tenant's invoice."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    price_versions: set[int] = field(default_factory=set)
    unpriced: int = 0  # entries of a model that had no price yet (cost 0)

    def add(self, entry: dict[str, Any]) -> None:
        self.requests += 1
        self.prompt_tokens += entry["prompt_tokens"]
        self.cached_tokens += entry["cached_tokens"]
        self.completion_tokens += entry["completion_tokens"]
        self.cost_micros += entry["cost_micros"]
        if entry["price_version"] is None:
            self.unpriced += 1
        else:
            self.price_versions.add(entry["price_version"])

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "completion_tokens": self.completion_tokens,
                "cost_micros": self.cost_micros,
                "price_versions": sorted(self.price_versions), "unpriced": self.unpriced}


@dataclass
class Ledger:
    """Entries kept once each, added up per tenant and model."""

    since: str | None = None
    until: str | None = None
    tenants: set[str] | None = None
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    invoices: dict[str, dict[str, Line]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Line)))

    def add(self, raw: bytes) -> bool:
        """Count one ledger record; False if it was a copy of one already counted or
        is outside the period and tenants asked for."""
        entry = json.loads(raw)
        if entry.get("event_type") != "ledger_entry":
            return False
        if entry["event_id"] in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(entry["event_id"])
        day = entry["day"]
        if (self.since and day < self.since) or (self.until and day > self.until):
            return False
        tenant = entry["tenant"] or "(no tenant)"
        if self.tenants is not None and tenant not in self.tenants:
            return False
        self.invoices[tenant][entry["model"]].add(entry)
        return True

    def as_dict(self) -> dict[str, Any]:
        tenants = {}
        for tenant, lines in sorted(self.invoices.items()):
            total = sum(line.cost_micros for line in lines.values())
            tenants[tenant] = {"models": {m: line.as_dict() for m, line in sorted(lines.items())},
                               "requests": sum(line.requests for line in lines.values()),
                               "cost_micros": total}
        return {"since": self.since, "until": self.until, "entries": len(self.seen),
                "duplicates_dropped": self.duplicates, "tenants": tenants}


def dollars(micros: int) -> str:
    """Exact dollars from integer micro-dollars: 1234567 -> '$1.234567'."""
    return f"${micros // MICROS_PER_DOLLAR:,}.{micros % MICROS_PER_DOLLAR:06d}"


def render(ledger: Ledger) -> str:
    period = f"{ledger.since or 'start'} .. {ledger.until or 'now'} (UTC days)"
    out = []
    for tenant, invoice in ledger.as_dict()["tenants"].items():
        out += [f"Invoice for {tenant}, {period}",
                f"  {'model':<32} {'requests':>9} {'prompt tok':>12} {'cached tok':>11} "
                f"{'output tok':>11} {'cost':>14}  price versions"]
        for model, line in invoice["models"].items():
            versions = ", ".join(f"v{v}" for v in line["price_versions"]) or "-"
            if line["unpriced"]:
                versions += f" ({line['unpriced']} unpriced)"
            out.append(f"  {model:<32} {line['requests']:>9,} {line['prompt_tokens']:>12,} "
                       f"{line['cached_tokens']:>11,} {line['completion_tokens']:>11,} "
                       f"{dollars(line['cost_micros']):>14}  {versions}")
        out += [f"  {'total':<32} {invoice['requests']:>9,} {'':>12} {'':>11} {'':>11} "
                f"{dollars(invoice['cost_micros']):>14}", ""]
    out.append(f"{len(ledger.seen):,} ledger entries, {ledger.duplicates:,} duplicate "
               "deliveries dropped.")
    return "\n".join(out)


async def consume(args: argparse.Namespace, ledger: Ledger) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(args.topic, p)
                      for p in sorted(consumer.partitions_for_topic(args.topic) or ())]
        if not partitions:
            raise SystemExit(f"no topic {args.topic} on {args.bootstrap}")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        # Caught up: past the end of every partition as it was at start, and nothing
        # more already fetched.
        ends = await consumer.end_offsets(partitions)
        changed = False
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    changed |= ledger.add(record.value)
            behind = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
            if behind or batches:
                continue
            if not args.follow:
                return
            if changed:
                print(render(ledger) if not args.json else json.dumps(ledger.as_dict()),
                      flush=True)
                changed = False
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    p.add_argument("--topic", default="sluice.ledger")
    p.add_argument("--month", help="only this UTC month, YYYY-MM")
    p.add_argument("--since", help="only from this UTC day on, YYYY-MM-DD")
    p.add_argument("--until", help="only up to this UTC day, YYYY-MM-DD (inclusive)")
    p.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    p.add_argument("--follow", action="store_true",
                   help="keep reading; print the invoices again as entries arrive")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    since, until = args.since, args.until
    if args.month:
        year, month = (int(part) for part in args.month.split("-"))
        since = f"{args.month}-01"
        until = f"{args.month}-{calendar.monthrange(year, month)[1]:02d}"
    ledger = Ledger(since=since, until=until,
                    tenants=set(args.tenant) if args.tenant else None)
    try:
        asyncio.run(consume(args, ledger))
    except KeyboardInterrupt:
        return 130
    if not args.follow:
        print(json.dumps(ledger.as_dict()) if args.json else render(ledger))
    return 0


if __name__ == "__main__":
    sys.exit(main())
