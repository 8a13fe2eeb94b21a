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
from streams.ops.logs import configure_logging
from streams.ops.placement import Placement, apply, discover, plan
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
    from streams.kafka.admin import ensure_app_topics

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
    from streams.kafka.admin import group_lag
    from streams.ops import health
    from streams.ops.services import redis_keys, service_versions, table_counts
    from streams.topics import hot_topics

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
            doc["library"] = await _library_version(settings)
        if doc["services"]["redis"]["ok"]:
            doc["redis_keys"] = await redis_keys(settings)
        doc.update(await health.report(settings, doc["services"]))  # lag, freshness, quality
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
@click.option("--group", "groups", multiple=True, help="Only this group (repeatable).")
@click.option("--watch", is_flag=True, help="Refresh the table until Ctrl-C.")
@click.option(
    "--samples",
    type=click.IntRange(min=2),
    default=3,
    show_default=True,
    help="Without --watch: samples taken (and judged as one window) before printing.",
)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between samples.")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def lag(groups: tuple[str, ...], watch: bool, samples: int, interval: float, as_json: bool) -> None:
    """Consumer lag of every group reading this namespace's topics, judged Burrow-style.

    Works without a worker. Exit status 2 when a group is ERROR or STOPPED. With --watch
    the window grows to SEPSTREAM_LAG_WINDOW samples; with --json too, one document per line.
    """
    import contextlib

    from rich.live import Live

    from kernels.lag_status import Status
    from streams.ops.consumer_lag import LagCollector, LagMonitor, judged

    settings = _settings()
    wanted = list(groups) or None
    if not watch:
        snap = asyncio.run(judged(settings, groups=wanted, samples=samples, interval_s=interval))
        if as_json:
            _print_json(snap.as_dict())
        else:
            out.print(_lag_table(snap.as_dict()))
        sys.exit(2 if any(g.status >= Status.ERROR for g in snap.groups) else 0)

    async def follow() -> None:
        monitor = LagMonitor(LagCollector(settings, groups=wanted), settings.lag_window)
        async with monitor.collector:
            with Live(console=out, auto_refresh=False, transient=False) as live:
                while True:
                    doc = (await monitor.poll()).as_dict()
                    if as_json:
                        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
                        sys.stdout.flush()
                    else:
                        live.update(_lag_table(doc), refresh=True)
                    await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --watch
        asyncio.run(follow())


_STATUS_STYLE = {"OK": "green", "WARNING": "yellow", "ERROR": "bold red", "STOPPED": "magenta"}


def _lag_table(doc: dict[str, Any]) -> Table:
    table = Table(title=f"sepstream lag — window {doc['window']} samples")
    for name in ("group", "topic", "partition", "committed", "end", "lag msgs", "lag s"):
        table.add_column(name, justify="left" if name in ("group", "topic") else "right")
    table.add_column("status")
    for g in doc["groups"]:
        for p in g["partitions"]:
            style = _STATUS_STYLE.get(p["status"], "")
            table.add_row(
                g["group"],
                p["topic"],
                str(p["partition"]),
                "-" if p["committed"] is None else f"{p['committed']:,}",
                f"{p['end']:,}",
                f"{p['lag']:,}",
                "n/a" if p["lag_s"] is None else f"{p['lag_s']:.1f}",
                f"[{style}]{p['status']}[/]",
                style=None,
            )
    if not doc["groups"]:
        table.caption = "no group has committed on this namespace's topics"
    return table


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
    from streams.model import library as lib
    from streams.stores.audit import audit
    from streams.stores.connections import pg_connect

    settings = _settings()
    start = lib.parse_since(since) if since else None

    async def run() -> dict[str, Any]:
        conn = await pg_connect(settings)  # the owner: storing may create path_library
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
        details = {"version": trained.version, "k": trained.k, "window": trained.window}
        await audit(settings, "train", None, {**details, "since": start, "published": publish})
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


@main.command("db-init")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def db_init(as_json: bool) -> None:
    """As the schema owner: create the namespace's tables and policies, the writer/reader
    roles (SEPSTREAM_PG_WRITER_USER / _READER_USER) and their grants. Idempotent, audited."""
    from streams.stores.audit import audit
    from streams.stores.provision import provision

    settings = _settings()

    async def run() -> dict[str, Any]:
        doc = await provision(settings)
        await audit(settings, "db-init", None, doc)
        return doc

    doc = asyncio.run(run())
    if as_json:
        _print_json(doc)
    else:
        out.print(", ".join(f"{k}: {v}" for k, v in doc.items()))


@main.command()
@click.option(
    "--venue",
    required=True,
    type=click.Choice(["binance", "coinbase", "kraken", "oanda"]),
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
    from streams.venues import normalize_symbols, run_collector
    from streams.venues.base import MalformedFrameError

    settings = _settings()
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


@main.group("symbols")
def symbols_group() -> None:
    """What running collectors collect: the compacted md.control.subscriptions topic."""


_VENUE_OPTION = click.option(
    "--venue",
    required=True,
    type=click.Choice(["binance", "coinbase", "kraken", "oanda"]),
    help="The venue whose collectors change.",
)
_SYMBOLS_OPTION = click.option(
    "--symbols", required=True, help="Comma-separated: BTC-USDT,ETH-USDT (or the venue's spelling)."
)


@symbols_group.command("add")
@_VENUE_OPTION
@_SYMBOLS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the recorded changes as JSON.")
def symbols_add(venue: str, symbols: str, as_json: bool) -> None:
    """Start collecting SYMBOLS on VENUE; running collectors subscribe without a restart."""
    _change_symbols(venue, symbols, active=True, as_json=as_json)


@symbols_group.command("remove")
@_VENUE_OPTION
@_SYMBOLS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the recorded changes as JSON.")
def symbols_remove(venue: str, symbols: str, as_json: bool) -> None:
    """Stop collecting SYMBOLS on VENUE (also symbols a collector was started with)."""
    _change_symbols(venue, symbols, active=False, as_json=as_json)


@symbols_group.command("list")
@click.option(
    "--venue", default=None, type=click.Choice(["binance", "coinbase", "kraken", "oanda"])
)
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
def symbols_list(venue: str | None, as_json: bool) -> None:
    """The latest decision per instrument on the control topic."""
    from datetime import UTC, datetime

    from streams.topics import SUBSCRIPTIONS_TOPIC
    from streams.venues.subscriptions import ControlReader

    settings = _settings()
    decisions = asyncio.run(ControlReader(settings, venue).read_all())
    rows = [d.as_dict() for _, d in sorted(decisions.items())]
    if as_json:
        _print_json({"topic": settings.topic(SUBSCRIPTIONS_TOPIC), "subscriptions": rows})
        return
    table = Table(title=f"sepstream symbols — {settings.topic(SUBSCRIPTIONS_TOPIC)}")
    for column in ("venue", "symbol", "active", "since", "by"):
        table.add_column(column)
    for r in rows:
        since = datetime.fromtimestamp(r["ts"] / 1e9, tz=UTC).isoformat(timespec="seconds")
        active = "[green]yes[/]" if r["active"] else "[red]no[/]"
        table.add_row(r["venue"], r["symbol"], active, since, r["by"])
    out.print(table)


def _change_symbols(venue: str, symbols: str, *, active: bool, as_json: bool) -> None:
    from streams.topics import SUBSCRIPTIONS_TOPIC
    from streams.venues import normalize_symbols
    from streams.venues.base import MalformedFrameError
    from streams.venues.subscriptions import Subscription, publish

    settings = _settings()
    try:
        wanted = normalize_symbols(venue, symbols.split(","))
    except MalformedFrameError as exc:
        raise click.BadParameter(str(exc), param_hint="--symbols") from None
    if not wanted:
        raise click.BadParameter("no symbols given", param_hint="--symbols")
    from streams.stores.audit import audit

    async def run() -> list[Subscription]:
        action = "subscription.add" if active else "subscription.remove"
        await audit(settings, action, None, {"venue": venue, "symbols": wanted})
        return await publish(settings, venue, wanted, active=active)

    changes = asyncio.run(run())
    if as_json:
        _print_json(
            {
                "topic": settings.topic(SUBSCRIPTIONS_TOPIC),
                "changes": [c.as_dict() for c in changes],
            }
        )
        return
    verb = "subscribed" if active else "unsubscribed"
    out.print(f"{venue}: {verb} {', '.join(wanted)} ({settings.topic(SUBSCRIPTIONS_TOPIC)})")


@main.command()
@click.option(
    "--venue",
    required=True,
    type=click.Choice(["binance", "oanda"]),
    help="Venue with REST history (OANDA needs SEPSTREAM_OANDA_TOKEN).",
)
@click.option("--symbol", required=True, help="BTC-USDT, EUR-USD (or the venue's spelling).")
@click.option("--from", "start", required=True, help="ISO-8601 time, or 7d / 12h / 30m ago.")
@click.option("--to", "end", default=None, help="ISO-8601 time, or 2h ago [default: now].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def backfill(venue: str, symbol: str, start: str, end: str | None, as_json: bool) -> None:
    """Fill the 1m bars missing from TimescaleDB in [--from, --to) from the venue's REST API."""
    from datetime import UTC, datetime

    from streams.model.library import parse_since
    from streams.venues import normalize_symbols
    from streams.venues.backfill import backfill as run_backfill
    from streams.venues.base import MalformedFrameError

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
    try:
        report = asyncio.run(run_backfill(settings, venue, wanted, first, last))
    except (ValueError, RuntimeError) as exc:  # no token; the venue refused the request
        raise click.ClickException(str(exc)) from None
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


@main.command()
@click.argument("symbol")
@click.option("--venue", default=None, help="binance, coinbase, ... [default: the one with bars].")
@click.option("--tf", "timeframe", default="1m", show_default=True, help="1m 5m 15m 1h 1d.")
@click.option("--limit", default=500, show_default=True, help="Newest closed bars wanted.")
@click.option("--include-forming", is_flag=True, help="Append the forming 1m bars (marked).")
@click.option("--json", "as_json", is_flag=True, help="Print the bars as JSON.")
def bars(  # click passes the options by name
    *,
    symbol: str,
    venue: str | None,
    timeframe: str,
    limit: int,
    include_forming: bool,
    as_json: bool,
) -> None:
    """Read bars: Redis, else TimescaleDB, else the venue's REST API (stored back)."""
    from streams.query.bars import BadRequestError, BarReader, BarsRequest, NotFoundError

    settings = _settings()
    try:
        req = BarsRequest.parse(
            symbol, venue, timeframe, limit, include_forming, max_limit=settings.read_max_limit
        )
    except BadRequestError as exc:
        raise click.UsageError(str(exc)) from None

    async def run() -> dict[str, Any]:
        async with BarReader(settings) as reader:
            return (await reader.read(req)).as_dict()

    try:
        doc = asyncio.run(run())
    except BadRequestError as exc:  # e.g. the symbol trades on several venues
        raise click.UsageError(str(exc)) from None
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(doc)
    else:
        _print_bars(doc)
    if not doc["bars"]:
        sys.exit(1)


def _print_bars(doc: dict[str, Any]) -> None:
    tiers = ", ".join(f"{t} {r}" for t, r in doc["tiers"].items())
    table = Table(
        title=f"{doc['venue']} {doc['symbol']} {doc['timeframe']} — {doc['count']} bars "
        f"from {doc['source']} ({tiers})"
    )
    table.add_column("time (UTC)", no_wrap=True, min_width=16)
    for name in ("open", "high", "low", "close", "volume", "trades", "vwap"):
        table.add_column(name, justify="right")
    table.add_column("flags")
    for b in doc["bars"]:
        flags = [n for bit, n in ((1, "gap"), (2, "corrected")) if b["flags"] & bit]
        if b["forming"]:
            flags.append("forming")
        table.add_row(
            b["time"][:16].replace("T", " "),  # bars open on whole minutes
            *(f"{b[k]:.8g}" for k in ("open", "high", "low", "close", "volume")),
            f"{b['trades']:,}",
            "" if b["vwap"] is None else f"{b['vwap']:.8g}",
            ",".join(flags),
        )
    out.print(table)
    if not doc["bars"]:
        out.print("[yellow]no bars[/]")


@main.command()
@click.option("--from", "start", required=True, help="ISO-8601 time (UTC), or 2h / 30m ago.")
@click.option("--to", "end", required=True, help="ISO-8601 time (UTC), or 1h ago; exclusive.")
@click.option("--namespace", required=True, help="Namespace of the backtest (never live's).")
@click.option("--symbols", default=None, help="Only these: BTC-USDT,sim_kraken:XRP-EUR.")
@click.option("--speed", default="max", show_default=True, help="max, or N× real time.")
@click.option("--warmup", default=None, help="Events replayed before --from [default: W 1m bars].")
@click.option("--verify", "verify_after", is_flag=True, help="Compare with the live tables.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the worker.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def replay(  # click passes the options by name
    *,
    start: str,
    end: str,
    namespace: str,
    symbols: str | None,
    speed: str,
    warmup: str | None,
    verify_after: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Replay a time range of the input topic into NAMESPACE, processed by its own worker."""
    from streams.backtest import replay as rp

    settings = _settings()
    try:
        rng = rp.ReplayRange(
            rp.parse_time(start),
            rp.parse_time(end),
            warmup_ns=rp.parse_duration(warmup) if warmup else rp.default_warmup_ns(settings),
            leadout_ns=rp.default_leadout_ns(settings),
            symbols=rp.symbols_from_cli(symbols),
        )
        pace = rp.parse_speed(speed)
        rp.target_settings(settings, namespace)  # refuses a namespace that is not isolated
    except (ValueError, rp.IsolationError) as exc:
        raise click.UsageError(str(exc)) from None
    from streams.stores.audit import audit

    async def run() -> rp.ReplaySummary:
        details = {"namespace": namespace, "from": start, "to": end, "symbols": symbols}
        await audit(settings, "replay", None, {**details, "speed": speed, "verify": verify_after})
        return await rp.replay_and_verify(
            settings, namespace, rng, speed=pace, verify_after=verify_after, timeout_s=timeout
        )

    summary = asyncio.run(run())
    if as_json:
        _print_json(summary.as_dict())
    else:
        rp.render(summary, out)
    sys.exit(0 if rp.succeeded(summary) else 1)


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
    from streams.model.library import load_latest
    from streams.stores.connections import pg_connect

    conn = await pg_connect(settings, "reader")
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
    for group, g in sorted(doc.get("lag_groups", {}).items()):
        style = _STATUS_STYLE.get(g["status"], "")
        lag_s = "n/a" if g["lag_s"] is None else f"{g['lag_s']:.1f} s"
        table.add_row(f"group {group}", f"[{style}]{g['status']}[/] lag {g['lag']:,} ({lag_s})")
    if "readpath" in doc:
        ratio = doc["readpath"]["ratio"]
        table.add_row("read-path cache hits", "n/a" if ratio is None else f"{ratio:.1%}")
    fresh = doc.get("freshness", {})
    for f in fresh.get("instruments", []):
        age = "n/a" if f["age_s"] is None else f"{f['age_s']:.1f} s"
        flag = " [red]STALE[/]" if f["stale"] else ""
        table.add_row(f"freshness {f['venue']}:{f['symbol']}", f"{age}{flag}")
    for q in doc.get("quality", {}).get("instruments", []):
        score = "n/a" if q["score"] is None else f"{q['score']:.3f}"
        flag = " [red]LOW[/]" if q["alert"] else ""
        table.add_row(
            f"quality {q['venue']}:{q['symbol']}",
            f"{score} ({q['accepted']:,} ok, {q['rejected']:,} dead-lettered){flag}",
        )
    table.add_row("kernel backend", doc["kernel_backend"])
    if "library" in doc:
        table.add_row("path library", doc["library"])
    for p in doc["placement"]:
        table.add_row(f"worker pid {p['pid']}", str(p.get("description", p.get("cpus"))))
    out.print(table)


if __name__ == "__main__":
    main()
