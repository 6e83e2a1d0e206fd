"""The analytics commands of `sluice`: `analytics` (run, `seed`) and `report usage`.

`deploy/cli.py` calls `register(subparsers)`; each command sets `run` to a function of the
parsed arguments that returns the exit status, like the other roles.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add `analytics`, `analytics seed` and `report usage` to the `sluice` parser."""
    an = subparsers.add_parser(
        "analytics", help="Run the ClickHouse sink and the reporting API.",
        description="Run the ClickHouse sink and the reporting API (one process).")
    an.add_argument("--host")
    an.add_argument("--port", type=int)
    an.set_defaults(run=_analytics)
    sub = an.add_subparsers(dest="analytics_command")
    seed = sub.add_parser(
        "seed", help="Insert synthetic usage rows (with chDB: while `analytics` is stopped).")
    seed.add_argument("--rows", type=int, required=True)
    seed.add_argument("--days", type=int, default=90, help="spread them over this many days")
    seed.set_defaults(run=_seed)

    report = subparsers.add_parser("report", help="Reports from the analytics API.")
    rsub = report.add_subparsers(dest="report_command", required=True)
    usage = rsub.add_parser("usage", help="Save a tenant's usage export to a file.",
                            description="Save a tenant's usage export (through the gateway, "
                            "with the admin key) to a file.")
    usage.add_argument("--tenant", help="the tenant; every tenant if omitted")
    usage.add_argument("--from", dest="start", help="Unix seconds, ISO date or datetime")
    usage.add_argument("--to", dest="end", help="exclusive; Unix seconds, ISO date or datetime")
    usage.add_argument("--format", choices=["csv", "json"], default="csv")
    usage.add_argument("--group-by", default="day", help="day, model, key (comma-separated)")
    usage.add_argument("-o", "--output", type=Path, help="the file; standard output if omitted")
    usage.set_defaults(run=_report_usage)


def _analytics(args: argparse.Namespace) -> int:
    from analytics.main import run
    from analytics.settings import Settings

    overrides = {f"analytics_{name}": getattr(args, name) for name in ("host", "port")
                 if getattr(args, name, None) is not None}
    run(Settings(**overrides))  # type: ignore[arg-type]
    return 0


def _seed(args: argparse.Namespace) -> int:
    from analytics.exceptions import AnalyticsError
    from analytics.main import seed

    try:
        seed(args.rows, days=args.days)
    except AnalyticsError as exc:
        print(f"sluice: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _report_usage(args: argparse.Namespace) -> int:
    from analytics import report

    try:
        written = report.usage(tenant=args.tenant, start=args.start, end=args.end,
                               fmt=args.format, group_by=args.group_by, output=args.output)
    except report.ReportFailed as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 1
    if args.output:
        print(f"wrote {written} bytes to {args.output}", file=sys.stderr)
    return 0
