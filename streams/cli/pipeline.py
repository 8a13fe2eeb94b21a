"""Commands that run the pipeline: `worker`, `demo` and `collect`.

A worker records its CPU placement in a file of the temp directory while it runs;
`sepstream status` (`streams/cli/ops.py`) reads those files back with `live_placements`.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import faust
import orjson
import structlog

from streams.app import create_app
from streams.cli.failures import load_settings
from streams.cli.output import console, key_value_table, print_json
from streams.demo import run_demo, start_services
from streams.kafka.admin import ensure_app_topics
from streams.ops.placement import Placement, apply, discover, plan
from streams.venues import COLLECTORS, normalize_symbols, run_collector
from streams.venues.base import MalformedFrameError


def placement_path(pid: int) -> Path:
    """Where worker `pid` records its CPU placement, for `sepstream status` to read."""
    return Path(tempfile.gettempdir()) / f"sepstream-placement-{pid}.json"


def live_placements() -> list[dict[str, Any]]:
    """CPU placements recorded by running workers on this host (stale files skipped)."""
    found = []
    for path in sorted(placement_path(0).parent.glob("sepstream-placement-*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
            os.kill(int(doc["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue  # unreadable, or its worker is gone (a SIGKILL leaves the file)
        found.append(doc)
    return found


def bind_from_cli(spec: str, worker_index: int = 0, workers: int = 1) -> Placement:
    """Discover, plan and bind this process as `sepstream worker --cpu-bind` does.

    Separate from the command so the binding can be tested without Kafka.
    """
    placement = plan(discover(), spec, worker_index=worker_index, workers=workers)
    apply(placement)
    return placement


@click.command()
@click.option(
    "--cpu-bind",
    default="none",
    show_default=True,
    envvar="SEPSTREAM_CPU_BIND",
    help="none | auto (GPU-local NUMA node, else disjoint cores per worker) | a list like 0,2-3.",
)
@click.option(
    "--worker-index",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    envvar="SEPSTREAM_WORKER_INDEX",
    help="This worker's index among --workers (for --cpu-bind auto).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    envvar="SEPSTREAM_WORKERS",
    help="Workers sharing this machine (for --cpu-bind auto).",
)
def worker(cpu_bind: str, worker_index: int, workers: int) -> None:
    """Run a stream worker: validate, bars, and the TimescaleDB and Redis sinks."""
    settings = load_settings(client_logs=True)
    log = structlog.get_logger("sepstream.worker")
    if worker_index >= workers:
        raise click.BadParameter(
            f"{worker_index} is not below --workers {workers}", param_hint="--worker-index"
        )
    try:
        placement = bind_from_cli(cpu_bind, worker_index, workers)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cpu-bind") from exc
    log.info("placement", **placement.as_dict())
    log.info("worker starting", settings=settings.redacted())
    path = placement_path(os.getpid())
    try:  # status reads this; a worker must not fail for want of a temp dir
        path.write_bytes(
            orjson.dumps({"pid": os.getpid(), "started": time.time(), **placement.as_dict()})
        )
        atexit.register(path.unlink, missing_ok=True)
    except OSError as exc:
        log.warning("placement not recorded", path=str(path), error=str(exc))

    app = create_app(settings)
    # The worker's own loop, made current for Faust: its topics exist before it starts.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_app_topics(app, settings))
    faust.Worker(
        app,
        loop=loop,
        loglevel=settings.log_level,
        override_logging=False,
        redirect_stdouts=False,
    ).execute_from_commandline()


@click.command()
@click.option("--events", default=200_000, show_default=True, help="Events to produce.")
@click.option("--seed", default=7, show_default=True, help="Synthetic market seed.")
@click.option("--source", default="synthetic", show_default=True, help="synthetic | csv:PATH")
@click.option("--services/--no-services", default=True, help="Start the dev services first.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(events: int, seed: int, source: str, services: bool, as_json: bool) -> None:
    """Run the whole pipeline once on the embedded defaults and print a summary."""
    settings = load_settings(client_logs=True)
    if services:
        start_services()
    summary = asyncio.run(run_demo(settings, source=source, events=events, seed=seed))
    if as_json:
        print_json(summary.as_dict())
    else:
        _print_demo(summary.as_dict())
    sys.exit(0 if summary.reconciled else 1)


def _print_demo(s: dict[str, Any]) -> None:
    table = key_value_table(f"sepstream demo — source {s['source']}, namespace {s['namespace']}")
    table.add_row("events produced", f"{s['produced']:,}")
    table.add_row("accepted", f"{s['accepted']:,}")
    table.add_row("dead-lettered", f"{s['dead_lettered']:,}")
    for reason, count in sorted(s["dead_letter_reasons"].items()):
        table.add_row(f"  {reason}", f"{count:,}")
    table.add_row("reconciled", "[green]yes[/]" if s["reconciled"] else "[red]NO[/]")
    for name, count in s["rows"].items():
        table.add_row(f"rows in {name}", f"{count:,}")
    for kind, count in sorted(s["redis_keys"].items()):
        table.add_row(f"redis keys {kind}", f"{count:,}")
    table.add_row("produce time", f"{s['produce_seconds']:.2f} s")
    table.add_row("processing time", f"{s['pipeline_seconds']:.2f} s")
    table.add_row("throughput", f"{s['events_per_s']:,.0f} events/s")
    console.print(table)
    console.print(f"worker log: {s['worker_log']}")


@click.command()
@click.option(
    "--venue",
    required=True,
    type=click.Choice(list(COLLECTORS)),
    help="The venue to collect from.",
)
@click.option(
    "--symbols",
    default=None,
    help="Comma-separated symbols: BTC-USDT,ETH-USDT (the venue's spelling also works) "
    "[default: SEPSTREAM_SYMBOLS]; `sepstream symbols add|remove` changes them at runtime.",
)
def collect(venue: str, symbols: str | None) -> None:
    """Collect one venue's trades, quotes and bars into md.trades.v1 until SIGINT/SIGTERM."""
    settings = load_settings(client_logs=True)
    given = symbols.split(",") if symbols is not None else list(settings.symbols)
    try:
        wanted = normalize_symbols(venue, given)
    except MalformedFrameError as exc:
        raise click.BadParameter(str(exc), param_hint="--symbols") from None
    if symbols is not None and not wanted:
        raise click.BadParameter("no symbols given", param_hint="--symbols")
    try:
        asyncio.run(run_collector(settings, venue, wanted))
    except ValueError as exc:  # a bad symbol, missing OANDA credentials, no such timeframe
        raise click.ClickException(str(exc)) from None
