"""What a replay reports: counts, rates, the verification, as JSON or a table."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from schemas.events import NS_PER_S


@dataclass
class TopicCount:
    records_read: int = 0
    records_replayed: int = 0
    events_replayed: int = 0
    undecodable: int = 0


@dataclass
class ReplaySummary:
    source_namespace: str
    namespace: str
    start: str
    end: str
    data_start: str
    data_end: str
    symbols: list[str]
    speed: str
    offset_lookup: dict[str, int]
    topics: dict[str, TopicCount]
    instruments: int
    publish_seconds: float
    elapsed_seconds: float
    records_per_s: float
    events_per_s: float
    complete: bool
    accepted: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    worker_log: str = ""
    verify: dict[str, Any] | None = None

    @property
    def events_replayed(self) -> int:
        return sum(t.events_replayed for t in self.topics.values())

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["events_replayed"] = self.events_replayed
        return doc


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS_PER_S, UTC).isoformat().replace("+00:00", "Z")


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} rec/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not enabled,
        transient=False,
    )


def succeeded(summary: ReplaySummary) -> bool:
    """Complete, and when verified, without a difference (the command's exit status)."""
    return summary.complete and (summary.verify is None or summary.verify["difference_count"] == 0)


def render(summary: ReplaySummary, console: Console) -> None:
    """The human-readable summary (and every difference found by --verify)."""

    s = summary
    table = Table(title=f"sepstream replay → namespace {s.namespace}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("range", f"{s.start} → {s.end}")
    table.add_row("replayed events", f"{s.data_start} → {s.data_end} (warm-up, lead-out)")
    table.add_row("symbols", ", ".join(s.symbols) or "all")
    table.add_row("speed", s.speed)
    table.add_row("offsets found by", ", ".join(f"{k} {v}" for k, v in s.offset_lookup.items()))
    for topic, c in s.topics.items():
        table.add_row(f"{topic} records read", f"{c.records_read:,}")
        table.add_row(f"{topic} records replayed", f"{c.records_replayed:,}")
        table.add_row(f"{topic} events replayed", f"{c.events_replayed:,}")
        if c.undecodable:
            table.add_row(f"{topic} undecodable (replayed)", f"{c.undecodable:,}")
    table.add_row("accepted / dead-lettered", f"{s.accepted:,} / {s.dead_lettered:,}")
    for name, count in s.rows.items():
        if count:
            table.add_row(f"rows in {s.namespace}.{name}", f"{count:,}")
    table.add_row("publish time", f"{s.publish_seconds:.2f} s")
    table.add_row("elapsed", f"{s.elapsed_seconds:.2f} s")
    table.add_row("rate", f"{s.records_per_s:,.0f} records/s, {s.events_per_s:,.0f} events/s")
    table.add_row("complete", "[green]yes[/]" if s.complete else "[red]NO[/] (see worker log)")
    if s.verify is not None:
        v = s.verify
        for name, count in v["compared_rows"].items():
            table.add_row(f"verified {name} rows", f"{count:,}")
        for name, count in sorted(v["not_compared"].items()):
            table.add_row(f"  not comparable {name}", f"{count:,}")
        n = v["difference_count"]
        table.add_row("differences", f"[green]{n}[/]" if n == 0 else f"[red]{n:,}[/]")
    console.print(table)
    if s.verify is not None and s.verify["differences"]:
        diffs = Table(title="differences (live vs replay)")
        for name in ("table", "venue", "symbol", "timeframe", "ts", "column", "live", "replay"):
            diffs.add_column(name)
        for d in s.verify["differences"]:
            diffs.add_row(*(str(d[k]) for k in ("table", "venue", "symbol", "timeframe", "ts")),
                          str(d["column"]), repr(d["live"]), repr(d["replay"]))  # fmt: skip
        console.print(diffs)
    if s.worker_log:
        console.print(f"worker log: {s.worker_log}")
