"""indicators: md.bars.v1 → md.indicators.v1 (docs/ARCHITECTURE.md#indicators), and the
indicator sinks.

Every closed bar, on every timeframe, is folded into incremental indicator state
(`kernels.indicator_books.Books`: one `IndicatorState` per timeframe, every instrument of
this worker a slot), and becomes one `IndicatorRecord`. A take (up to
`indicators_max_batch` records or `indicators_max_wait_ms`) is applied in rounds across
instruments, so bars that close together cost one vectorised update. The shared runner
(agents.stage) then publishes the records, saves each touched instrument's state to the
`indicator-state` table and acks. A record at or before the last md.bars.v1 position
applied to its instrument is a redelivery and is skipped; a bar not after the last one
applied for its instrument and timeframe (a repeat, or a correction: closed bars are final)
is not folded in, and counted.

The sinks read md.indicators.v1 on the shared sink loop (agents.sinks): the `indicators`
hypertable and the latest-indicators hash per instrument and timeframe in Redis.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import faust
from prometheus_client import Counter, Histogram

from agents.sinks import own_channel, register_sinks
from agents.stage import Output, Stage, bar_records, redelivered, state_table
from kernels.indicator_books import Applied, Books, PendingBar, pending_bars
from schemas.indicator import decode_indicator
from streams.ops.metrics import KERNEL_SECONDS
from streams.settings import Settings
from streams.sinks.indicators import IndicatorRedisWriter, IndicatorTimescaleWriter
from streams.topics import Topics

STAGE: Final = "indicators"

RECORDS: Final = Counter("sepstream_indicator_records", "Indicator records emitted", ["timeframe"])
SKIPPED: Final = Counter(
    "sepstream_indicator_bars_skipped",
    "Bars not folded into indicator state: not after the last bar applied (repeat/correction)",
    ["timeframe"],
)
ROUND_ROWS: Final = Histogram(
    "sepstream_indicator_round_rows",
    "Instruments per vectorised indicator update",
    buckets=(1, 4, 16, 64, 256, 1024, 4096),
)


def count(applied: Applied) -> None:
    """The metrics of one `Books.apply`."""
    for tf, n in applied.skipped.items():
        SKIPPED.labels(tf).inc(n)
    for rows, seconds in applied.rounds:
        KERNEL_SECONDS.labels(STAGE, "numpy").observe(seconds)
        ROUND_ROWS.observe(rows)
    for tf, n in applied.emitted.items():
        RECORDS.labels(tf).inc(n)


class Indicators:
    """The stage's logic on the shared runner (agents.stage): the books, loaded from the
    table (or this take's staged state) when an instrument is first seen."""

    def __init__(self, stage: Stage, topics: Topics) -> None:
        self.stage = stage
        self.topics = topics
        self.books = Books()

    def reset(self) -> None:
        self.books = Books()

    def compute(self, events: Sequence[Any], out: Output) -> None:
        bars: list[PendingBar] = []
        touched: list[bytes] = []
        for key, batch, position in bar_records(events):
            held = self.books.load(key, self.stage.stored(key))
            if redelivered(held.src, position):
                continue  # applied before this worker restarted
            held.src = position
            touched.append(key)
            bars += pending_bars(batch)
        applied = self.books.apply(bars, time.time_ns())
        count(applied)
        for record in applied.records:
            out.send(self.topics.indicators, record.key.encode(), record.encode())
        for key in dict.fromkeys(touched):
            out.states[key] = self.books.encode(key)


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    """The indicators stage and the indicator sinks."""
    stage = Stage(
        app,
        settings,
        name=STAGE,
        channel=own_channel(app, topics.bars),
        dlq=topics.dlq,
        max_records=settings.indicators_max_batch,
        linger_s=settings.indicators_max_wait_ms / 1000,
        table=state_table(app, settings, "indicator-state"),
    )
    stage.run(Indicators(stage, topics))

    register_sinks(
        app,
        topics,
        settings,
        prefix="indicators-",
        inputs=(topics.indicators,),
        decode=decode_indicator,
        writers={
            "timescale": IndicatorTimescaleWriter(settings),
            "redis": IndicatorRedisWriter(settings),
        },
        newest_ns=lambda r: r.ts_emit,
    )
