"""What operators run to look at the system: `status`, `lag`, and `db-init` to provision it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from kernels.damping import resolve_backend
from kernels.lag_status import Status
from streams.cli.failures import load_settings
from streams.cli.output import STATUS_STYLE, console, print_json, print_json_line
from streams.cli.pipeline import live_placements
from streams.kafka.admin import group_lag
from streams.model.library import DEFAULT_VERSION, load_latest
from streams.ops import health
from streams.ops.consumer_lag import LagCollector, LagMonitor, judged
from streams.ops.services import redis_keys, service_versions, table_counts
from streams.settings import Settings
from streams.stores.audit import audit
from streams.stores.connections import pg_connect
from streams.stores.provision import provision
from streams.topics import hot_topics


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Connections, consumer lag of the worker group, stored rows and cached keys."""
    settings = load_settings()

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
        doc["placement"] = live_placements()
        return doc

    doc = asyncio.run(gather())
    if as_json:
        print_json(doc)
    else:
        _print_status(doc)
    sys.exit(0 if all(s["ok"] for s in doc["services"].values()) else 1)


async def _library_version(settings: Settings) -> str:
    """The newest stored path library (what running workers swap to), else the built-in."""
    conn = await pg_connect(settings, "reader")
    try:
        latest = await load_latest(conn, settings.pg_schema)
    finally:
        await conn.close()
    return latest.version if latest is not None else DEFAULT_VERSION


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
        style = STATUS_STYLE.get(g["status"], "")
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
    console.print(table)


@click.command()
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
    settings = load_settings()
    wanted = list(groups) or None
    if not watch:
        snap = asyncio.run(judged(settings, groups=wanted, samples=samples, interval_s=interval))
        if as_json:
            print_json(snap.as_dict())
        else:
            console.print(_lag_table(snap.as_dict()))
        sys.exit(2 if any(g.status >= Status.ERROR for g in snap.groups) else 0)

    async def follow() -> None:
        monitor = LagMonitor(LagCollector(settings, groups=wanted), settings.lag_window)
        async with monitor.collector:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                while True:
                    doc = (await monitor.poll()).as_dict()
                    if as_json:
                        print_json_line(doc)
                    else:
                        live.update(_lag_table(doc), refresh=True)
                    await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --watch
        asyncio.run(follow())


def _lag_table(doc: dict[str, Any]) -> Table:
    table = Table(title=f"sepstream lag — window {doc['window']} samples")
    for name in ("group", "topic", "partition", "committed", "end", "lag msgs", "lag s"):
        table.add_column(name, justify="left" if name in ("group", "topic") else "right")
    table.add_column("status")
    for g in doc["groups"]:
        for p in g["partitions"]:
            style = STATUS_STYLE.get(p["status"], "")
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


@click.command("db-init")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def db_init(as_json: bool) -> None:
    """As the schema owner: create the namespace's tables and policies, the writer/reader
    roles (SEPSTREAM_PG_WRITER_USER / _READER_USER) and their grants. Idempotent, audited."""
    settings = load_settings()

    async def run() -> dict[str, Any]:
        doc = await provision(settings)
        await audit(settings, "db-init", None, doc)
        return doc

    doc = asyncio.run(run())
    if as_json:
        print_json(doc)
    else:
        console.print(", ".join(f"{k}: {v}" for k, v in doc.items()))
