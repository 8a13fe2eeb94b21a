"""Commands about the data itself: `bars`, `backfill`, `symbols add|remove|list`, `train`."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from streams.cli.failures import CommandGroup, load_settings
from streams.cli.output import console, key_value_table, print_json
from streams.model import library
from streams.query.bars import BadRequestError, BarReader, BarsRequest, NotFoundError
from streams.stores.audit import audit
from streams.stores.connections import pg_connect
from streams.topics import MODEL_TOPIC, SUBSCRIPTIONS_TOPIC
from streams.venues import COLLECTORS, normalize_symbols
from streams.venues.backfill import HISTORY
from streams.venues.backfill import backfill as run_backfill
from streams.venues.base import MalformedFrameError
from streams.venues.subscriptions import ControlReader, Subscription
from streams.venues.subscriptions import publish as publish_subscriptions


@click.command()
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
    settings = load_settings()
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
        print_json(doc)
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
    console.print(table)
    if not doc["bars"]:
        console.print("[yellow]no bars[/]")


@click.command()
@click.option(
    "--venue",
    required=True,
    type=click.Choice(list(HISTORY)),
    help="Venue with REST history (OANDA needs SEPSTREAM_OANDA_TOKEN).",
)
@click.option("--symbol", required=True, help="BTC-USDT, EUR-USD (or the venue's spelling).")
@click.option("--from", "start", required=True, help="ISO-8601 time, or 7d / 12h / 30m ago.")
@click.option("--to", "end", default=None, help="ISO-8601 time, or 2h ago [default: now].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def backfill(venue: str, symbol: str, start: str, end: str | None, as_json: bool) -> None:
    """Fill the 1m bars missing from TimescaleDB in [--from, --to) from the venue's REST API."""
    settings = load_settings()
    try:
        (wanted,) = normalize_symbols(venue, [symbol])
    except (MalformedFrameError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--symbol") from None
    try:
        first = library.parse_since(start)
        last = library.parse_since(end) if end else datetime.now(UTC)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from/--to") from None
    if last <= first:
        raise click.BadParameter("--to must be after --from", param_hint="--to")
    try:
        report = asyncio.run(run_backfill(settings, venue, wanted, first, last))
    except (ValueError, RuntimeError) as exc:  # no token; the venue refused the request
        raise click.ClickException(str(exc)) from None
    if as_json:
        print_json(report.as_dict())
        return
    table = key_value_table(f"sepstream backfill — {venue} {wanted} 1m")
    for name in ("expected", "present", "missing", "requests", "written"):
        table.add_row(name, f"{getattr(report, name):,}")
    table.add_row("unavailable at the venue", f"{len(report.unavailable):,}")
    console.print(table)


@click.group("symbols", cls=CommandGroup)
def symbols() -> None:
    """What running collectors collect: the compacted md.control.subscriptions topic."""


_VENUE_OPTION = click.option(
    "--venue",
    required=True,
    type=click.Choice(list(COLLECTORS)),
    help="The venue whose collectors change.",
)
_SYMBOLS_OPTION = click.option(
    "--symbols", required=True, help="Comma-separated: BTC-USDT,ETH-USDT (or the venue's spelling)."
)


@symbols.command("add")
@_VENUE_OPTION
@_SYMBOLS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the recorded changes as JSON.")
def symbols_add(venue: str, symbols: str, as_json: bool) -> None:
    """Start collecting SYMBOLS on VENUE; running collectors subscribe without a restart."""
    _change_symbols(venue, symbols, active=True, as_json=as_json)


@symbols.command("remove")
@_VENUE_OPTION
@_SYMBOLS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the recorded changes as JSON.")
def symbols_remove(venue: str, symbols: str, as_json: bool) -> None:
    """Stop collecting SYMBOLS on VENUE (also symbols a collector was started with)."""
    _change_symbols(venue, symbols, active=False, as_json=as_json)


@symbols.command("list")
@click.option("--venue", default=None, type=click.Choice(list(COLLECTORS)))
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
def symbols_list(venue: str | None, as_json: bool) -> None:
    """The latest decision per instrument on the control topic."""
    settings = load_settings()
    decisions = asyncio.run(ControlReader(settings, venue).read_all())
    rows = [d.as_dict() for _, d in sorted(decisions.items())]
    topic = settings.topic(SUBSCRIPTIONS_TOPIC)
    if as_json:
        print_json({"topic": topic, "subscriptions": rows})
        return
    table = Table(title=f"sepstream symbols — {topic}")
    for column in ("venue", "symbol", "active", "since", "by"):
        table.add_column(column)
    for r in rows:
        since = datetime.fromtimestamp(r["ts"] / 1e9, tz=UTC).isoformat(timespec="seconds")
        active = "[green]yes[/]" if r["active"] else "[red]no[/]"
        table.add_row(r["venue"], r["symbol"], active, since, r["by"])
    console.print(table)


def _change_symbols(venue: str, symbols: str, *, active: bool, as_json: bool) -> None:
    settings = load_settings()
    try:
        wanted = normalize_symbols(venue, symbols.split(","))
    except MalformedFrameError as exc:
        raise click.BadParameter(str(exc), param_hint="--symbols") from None
    if not wanted:
        raise click.BadParameter("no symbols given", param_hint="--symbols")

    async def run() -> list[Subscription]:
        action = "subscription.add" if active else "subscription.remove"
        await audit(settings, action, None, {"venue": venue, "symbols": wanted})
        return await publish_subscriptions(settings, venue, wanted, active=active)

    changes = asyncio.run(run())
    topic = settings.topic(SUBSCRIPTIONS_TOPIC)
    if as_json:
        print_json({"topic": topic, "changes": [c.as_dict() for c in changes]})
        return
    verb = "subscribed" if active else "unsubscribed"
    console.print(f"{venue}: {verb} {', '.join(wanted)} ({topic})")


@click.command()
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
    settings = load_settings()
    try:
        start = library.parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None

    async def run() -> dict[str, Any]:
        conn = await pg_connect(settings)  # the owner: storing may create path_library
        try:
            closes = await library.load_closes(conn, settings.pg_schema, since=start)
            trained = library.train(
                closes,
                k=k or settings.library_k,
                window=window or settings.damping_window,
                seed=seed,
                iterations=iterations,
                stride=stride,
                max_windows=max_windows,
            )
            await library.store(conn, settings.pg_schema, trained)
        finally:
            await conn.close()
        if publish:
            await library.publish(settings, trained)
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
            "topic": settings.topic(MODEL_TOPIC) if publish else None,
        }

    try:
        doc = asyncio.run(run())
    except ValueError as exc:  # too little history for k
        raise click.ClickException(str(exc)) from None
    if as_json:
        print_json(doc)
        return
    table = key_value_table(f"sepstream train — library {doc['version']}")
    for name in ("k", "window", "instruments", "windows_total", "windows_used", "rounds", "seed"):
        table.add_row(name.replace("_", " "), f"{doc[name]:,}")
    table.add_row("inertia", f"{doc['inertia']:.4f}")
    table.add_row("since", doc["since"] or "all bars")
    table.add_row("published", doc["topic"] or "[yellow]no[/]")
    console.print(table)
