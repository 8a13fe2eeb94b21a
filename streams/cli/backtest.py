"""`sepstream replay`: a time range of the input topic through a worker of its own namespace."""

from __future__ import annotations

import asyncio
import sys

import click

from streams.backtest.plan import (
    IsolationError,
    ReplayRange,
    default_leadout_ns,
    default_warmup_ns,
    parse_duration,
    parse_speed,
    parse_time,
    symbols_from_cli,
    target_settings,
)
from streams.backtest.replay import replay_and_verify
from streams.backtest.summary import ReplaySummary, render, succeeded
from streams.cli.failures import load_settings
from streams.cli.output import console, print_json
from streams.stores.audit import audit


@click.command()
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
    settings = load_settings(client_logs=True)
    try:
        rng = ReplayRange(
            parse_time(start),
            parse_time(end),
            warmup_ns=parse_duration(warmup) if warmup else default_warmup_ns(settings),
            leadout_ns=default_leadout_ns(settings),
            symbols=symbols_from_cli(symbols),
        )
        pace = parse_speed(speed)
        target_settings(settings, namespace)  # refuses a namespace that is not isolated
    except (ValueError, IsolationError) as exc:
        raise click.UsageError(str(exc)) from None

    async def run() -> ReplaySummary:
        details = {"namespace": namespace, "from": start, "to": end, "symbols": symbols}
        await audit(settings, "replay", None, {**details, "speed": speed, "verify": verify_after})
        return await replay_and_verify(
            settings, namespace, rng, speed=pace, verify_after=verify_after, timeout_s=timeout
        )

    summary = asyncio.run(run())
    if as_json:
        print_json(summary.as_dict())
    else:
        render(summary, console)
    sys.exit(0 if succeeded(summary) else 1)
