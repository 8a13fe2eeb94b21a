"""`sepstream` command line. `--json` prints one JSON document on stdout; logs go to stderr."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

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


@main.command()
def worker() -> None:
    """Run a stream worker: validate, bars, and the TimescaleDB and Redis sinks."""
    import faust

    from streams.app import create_app

    settings = _settings()
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
        return doc

    doc = asyncio.run(gather())
    if as_json:
        _print_json(doc)
    else:
        _print_status(doc)
    sys.exit(0 if all(s["ok"] for s in doc["services"].values()) else 1)


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
    out.print(table)


if __name__ == "__main__":
    main()
