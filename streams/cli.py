"""`sepstream` command line. `--json` prints one JSON document on stdout; logs go to stderr."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from kernels.damping import resolve_backend
from kernels.placement import Placement, apply, discover, plan
from streams.logs import configure_logging
from streams.settings import Settings

out = Console()


def _settings() -> Settings:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


@click.group()
def main() -> None:
    """sepstream: market data through Kafka into TimescaleDB and Redis."""


def placement_path(pid: int) -> Path:
    """Where worker `pid` records its CPU placement, for `sepstream status` to read."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"sepstream-placement-{pid}.json"


def bind_from_cli(spec: str, worker_index: int = 0, workers: int = 1) -> Placement:
    """Discover, plan and bind this process as `sepstream worker --cpu-bind` does.

    Separate from the command so the binding can be tested without Kafka.
    """
    placement = plan(discover(), spec, worker_index=worker_index, workers=workers)
    apply(placement)
    return placement


@main.command()
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
    import atexit
    import os
    import time

    import faust
    import structlog

    from streams.app import create_app

    settings = _settings()
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
    path = placement_path(os.getpid())
    try:  # status reads this; a worker must not fail for want of a temp dir
        path.write_bytes(
            orjson.dumps({"pid": os.getpid(), "started": time.time(), **placement.as_dict()})
        )
        atexit.register(path.unlink, missing_ok=True)
    except OSError as exc:
        log.warning("placement not recorded", path=str(path), error=str(exc))

    app = create_app(settings)
    faust.Worker(
        app,
        loglevel=settings.log_level,
        override_logging=False,
        redirect_stdouts=False,
    ).execute_from_commandline()


@main.command()
@click.option("--events", default=200_000, show_default=True, help="Events to produce.")
@click.option("--seed", default=7, show_default=True, help="Synthetic market seed.")
@click.option("--source", default="synthetic", show_default=True, help="synthetic | csv:PATH")
@click.option("--services/--no-services", default=True, help="Start the dev services first.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(events: int, seed: int, source: str, services: bool, as_json: bool) -> None:
    """Run the whole pipeline once on the embedded defaults and print a summary."""
    from streams.demo import run_demo, start_services

    settings = _settings()
    if services:
        start_services()
    summary = asyncio.run(run_demo(settings, source=source, events=events, seed=seed))
    if as_json:
        _print_json(summary.as_dict())
    else:
        _print_summary(summary.as_dict())
    sys.exit(0 if summary.reconciled else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Connections, consumer lag of the worker group, stored rows and cached keys."""
    from streams.inspect import group_lag, hot_topics, redis_keys, service_versions, table_counts

    settings = _settings()

    async def gather() -> dict[str, Any]:
        doc: dict[str, Any] = {"services": await service_versions(settings)}
        if doc["services"]["kafka"]["ok"]:
            lags = await group_lag(settings, settings.group_id, list(hot_topics(settings).values()))
            doc["lag"] = {
                t: sum(x.messages for x in lags if x.topic == t) for t in {x.topic for x in lags}
            }
        if doc["services"]["postgres"]["ok"]:
            doc["rows"] = await table_counts(settings)
        if doc["services"]["redis"]["ok"]:
            doc["redis_keys"] = await redis_keys(settings)
            doc["library"] = await _library_version(settings)
        doc["kernel_backend"] = resolve_backend(settings.damping_backend)
        doc["placement"] = _live_placements()
        return doc

    doc = asyncio.run(gather())
    if as_json:
        _print_json(doc)
    else:
        _print_status(doc)
    sys.exit(0 if all(s["ok"] for s in doc["services"].values()) else 1)


@main.command()
@click.option("--k", type=int, default=None, help="Reference paths [default: SEPSTREAM_LIBRARY_K].")
@click.option("--window", type=int, default=None, help="W [default: SEPSTREAM_DAMPING_WINDOW].")
@click.option("--since", default=None, help="Bars from: ISO-8601 time, or 7d / 12h / 30m ago.")
@click.option("--seed", default=0, show_default=True, help="Seeds k-means++ and subsampling.")
@click.option("--iterations", default=100, show_default=True, help="Max k-means rounds.")
@click.option("--stride", default=1, show_default=True, help="Bars between window starts.")
@click.option("--max-windows", default=200_000, show_default=True, help="Subsample above this.")
@click.option("--publish/--no-publish", default=True, help="Publish on md.model.paths.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train(  # click passes the options by name
    *,
    k: int | None,
    window: int | None,
    since: str | None,
    seed: int,
    iterations: int,
    stride: int,
    max_windows: int,
    publish: bool,
    as_json: bool,
) -> None:
    """Train a path library from the 1m bars in TimescaleDB, store it and publish it."""
    import asyncpg

    from streams import library as lib

    settings = _settings()
    start = lib.parse_since(since) if since else None

    async def run() -> dict[str, Any]:
        conn = await asyncpg.connect(settings.dsn_with_password())
        try:
            closes = await lib.load_closes(conn, settings.pg_schema, since=start)
            trained = lib.train(
                closes,
                k=k or settings.library_k,
                window=window or settings.damping_window,
                seed=seed,
                iterations=iterations,
                stride=stride,
                max_windows=max_windows,
            )
            await lib.store(conn, settings.pg_schema, trained)
        finally:
            await conn.close()
        if publish:
            await lib.publish(settings, trained)
        p = trained.params
        return {
            "version": trained.version,
            "namespace": settings.namespace,
            "since": start.isoformat() if start else None,
            "k": trained.k,
            "window": trained.window,
            "instruments": p["instruments"],
            "windows_total": p["windows_total"],
            "windows_used": p["windows_used"],
            "inertia": p["inertia"],
            "rounds": p["rounds"],
            "seed": seed,
            "published": publish,
            "topic": settings.topic("md.model.paths") if publish else None,
        }

    try:
        doc = asyncio.run(run())
    except ValueError as exc:  # too little history for k, a bad --since
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(doc)
        return
    table = Table(title=f"sepstream train — library {doc['version']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name in ("k", "window", "instruments", "windows_total", "windows_used", "rounds", "seed"):
        table.add_row(name.replace("_", " "), f"{doc[name]:,}")
    table.add_row("inertia", f"{doc['inertia']:.4f}")
    table.add_row("since", doc["since"] or "all bars")
    table.add_row("published", doc["topic"] or "[yellow]no[/]")
    out.print(table)


@main.command()
@click.option(
    "--venue",
    required=True,
    type=click.Choice(["binance", "coinbase", "kraken", "oanda"]),
    help="The venue to collect from.",
)
@click.option(
    "--symbols",
    required=True,
    help="Comma-separated symbols: BTC-USDT,ETH-USDT (the venue's spelling also works).",
)
def collect(venue: str, symbols: str) -> None:
    """Collect one venue's trades, quotes and bars into md.trades.v1 until SIGINT/SIGTERM."""
    from streams.collectors import normalize_symbols, run_collector
    from streams.collectors.base import MalformedFrameError

    settings = _settings()
    try:
        wanted = normalize_symbols(venue, symbols.split(","))
    except MalformedFrameError as exc:
        raise click.BadParameter(str(exc), param_hint="--symbols") from None
    if not wanted:
        raise click.BadParameter("no symbols given", param_hint="--symbols")
    try:
        asyncio.run(run_collector(settings, venue, wanted))
    except ValueError as exc:  # a bad symbol, missing OANDA credentials, no such timeframe
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option(
    "--venue", required=True, type=click.Choice(["binance"]), help="Venue with REST history."
)
@click.option("--symbol", required=True, help="BTC-USDT (or the venue's spelling).")
@click.option("--from", "start", required=True, help="ISO-8601 time, or 7d / 12h / 30m ago.")
@click.option("--to", "end", default=None, help="ISO-8601 time, or 2h ago [default: now].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def backfill(venue: str, symbol: str, start: str, end: str | None, as_json: bool) -> None:
    """Fill the 1m bars missing from TimescaleDB in [--from, --to) from the venue's REST API."""
    from datetime import UTC, datetime

    from streams.collectors import normalize_symbols
    from streams.collectors.backfill import backfill_binance
    from streams.collectors.base import MalformedFrameError
    from streams.library import parse_since

    settings = _settings()
    try:
        (wanted,) = normalize_symbols(venue, [symbol])
    except (MalformedFrameError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--symbol") from None
    try:
        first = parse_since(start)
        last = parse_since(end) if end else datetime.now(UTC)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from/--to") from None
    if last <= first:
        raise click.BadParameter("--to must be after --from", param_hint="--to")
    report = asyncio.run(backfill_binance(settings, wanted, first, last))
    if as_json:
        _print_json(report.as_dict())
        return
    table = Table(title=f"sepstream backfill — {venue} {wanted} 1m", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name in ("expected", "present", "missing", "requests", "written"):
        table.add_row(name, f"{getattr(report, name):,}")
    table.add_row("unavailable at the venue", f"{len(report.unavailable):,}")
    out.print(table)


def _print_summary(s: dict[str, Any]) -> None:
    table = Table(
        title=f"sepstream demo — source {s['source']}, namespace {s['namespace']}",
        show_header=False,
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
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
    out.print(table)
    out.print(f"worker log: {s['worker_log']}")


async def _library_version(settings: Settings) -> str:
    """The newest stored path library (what running workers swap to), else the built-in."""
    import asyncpg

    from streams.library import load_latest

    conn = await asyncpg.connect(settings.dsn_with_password())
    try:
        latest = await load_latest(conn, settings.pg_schema)
    finally:
        await conn.close()
    return latest.version if latest is not None else "default"


def _live_placements() -> list[dict[str, Any]]:
    """CPU placements recorded by running workers on this host (stale files skipped)."""
    out = []
    for path in sorted(placement_path(0).parent.glob("sepstream-placement-*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
            os.kill(int(doc["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue  # unreadable, or its worker is gone (a SIGKILL leaves the file)
        out.append(doc)
    return out


def _print_status(doc: dict[str, Any]) -> None:
    table = Table(title="sepstream status")
    table.add_column("what")
    table.add_column("state")
    for name, svc in doc["services"].items():
        state = "[green]up[/]" if svc["ok"] else f"[red]down[/] {svc.get('error', '')}"
        details = ", ".join(f"{k}={v}" for k, v in svc.items() if k not in {"ok", "error"})
        table.add_row(name, f"{state} {details}")
    for topic, lag in sorted(doc.get("lag", {}).items()):
        table.add_row(f"lag {topic}", f"{lag:,}")
    for name, count in doc.get("rows", {}).items():
        table.add_row(f"rows {name}", f"{count:,}")
    for kind, count in sorted(doc.get("redis_keys", {}).items()):
        table.add_row(f"redis {kind}", f"{count:,}")
    table.add_row("kernel backend", doc["kernel_backend"])
    if "library" in doc:
        table.add_row("path library", doc["library"])
    for p in doc["placement"]:
        table.add_row(f"worker pid {p['pid']}", str(p.get("description", p.get("cpus"))))
    out.print(table)


if __name__ == "__main__":
    main()
