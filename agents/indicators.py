"""indicators: md.bars.v1 → md.indicators.v1 (DESIGN §6), and the indicator sinks.

One `kernels.indicators.IndicatorState` per timeframe holds every instrument of this worker
as a slot. A micro-batch (up to `indicators_max_batch` bar records or
`indicators_max_wait_ms`) is grouped by timeframe; per timeframe the bars of each
instrument are put in time order and applied in rounds — round r holds the r-th new bar of
every instrument that has one — so bars that close together cost one vectorised `update`.

State: per instrument key (``venue:symbol``, the md.bars.v1 key, so the changelog partition
is the input partition) a changelog-backed table value holding, per timeframe, the
`IndicatorState.to_bytes` snapshot and the open time of the last bar applied, plus the
(partition, offset) in md.bars.v1 of the last record applied. A restarted worker loads it
and produces exactly the values an uninterrupted one would have.

Order per micro-batch (the shared runner, agents.stage): compute → publish the records and
wait for the broker → save the state → ack. A crash before the save re-applies the
redelivered records from the old state and publishes the same values again (the sinks
upsert); a crash after it skips them (the offset check). A bar whose open time is not after
the last one applied for its instrument and timeframe is not folded in: a re-emitted bar
(the bars stage re-closing after its own restart) is a repeat, and a corrected bar cannot be
re-applied to an incremental state — indicators keep the values of the bar as first closed
(§6: a closed bar is final), and the skip is counted.

The sinks read md.indicators.v1 with `agents.sinks.register_sink`: the `indicators`
hypertable and the latest-indicators hash per instrument and timeframe in Redis.
"""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import faust
import numpy as np
import orjson
import structlog
from prometheus_client import Counter, Histogram

from agents.sinks import own_channel, register_sinks
from agents.stage import Output, Stage
from kernels.indicators import IndicatorConfig, IndicatorState
from schemas.batch import CodecError, decode_batch
from schemas.events import Kind
from schemas.indicator import IndicatorRecord, decode_indicator, value_or_none
from streams.ops.metrics import KERNEL_SECONDS
from streams.settings import Settings
from streams.sinks.indicators import IndicatorRedisWriter, IndicatorTimescaleWriter
from streams.topics import Topics

log = structlog.get_logger(__name__)
STAGE: Final = "indicators"
# Fixed: the record format and the table's columns are this config's outputs.
CONFIG: Final = IndicatorConfig()

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


@dataclass(frozen=True, slots=True)
class PendingBar:
    key: bytes
    venue: str
    symbol: str
    timeframe: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    flags: int


@dataclass
class Held:
    """What the table holds for one instrument, besides the snapshots in the states."""

    src: tuple[int, int] | None = None  # (partition, offset) in md.bars.v1
    last_ts: dict[str, int] = field(default_factory=dict)  # timeframe → last bar applied


class Books:
    """The in-memory side of the table: one IndicatorState per timeframe, slots per key."""

    def __init__(self) -> None:
        self.states: dict[str, IndicatorState] = {}
        self.slots: dict[tuple[bytes, str], int] = {}
        self.held: dict[bytes, Held] = {}

    def state(self, tf: str) -> IndicatorState:
        st = self.states.get(tf)
        if st is None:
            st = self.states[tf] = IndicatorState(CONFIG)
        return st

    def slot(self, key: bytes, tf: str) -> int:
        s = self.slots.get((key, tf))
        if s is None:
            s = self.slots[(key, tf)] = int(self.state(tf).add_instruments(1)[0])
        return s

    def load(self, key: bytes, stored: bytes | None) -> Held:
        held = self.held.get(key)
        if held is not None:
            return held
        held = self.held[key] = Held()
        if stored is not None:
            doc = orjson.loads(stored)
            if doc.get("src"):
                held.src = (int(doc["src"][0]), int(doc["src"][1]))
            for tf, entry in doc.get("tf", {}).items():
                self.state(tf).from_bytes(self.slot(key, tf), base64.b64decode(entry["state"]))
                held.last_ts[tf] = int(entry["last"])
        return held

    def encode(self, key: bytes) -> bytes:
        held = self.held[key]
        return orjson.dumps(
            {
                "src": held.src,
                "tf": {
                    tf: {
                        "last": last,
                        "state": base64.b64encode(
                            self.states[tf].to_bytes(self.slots[(key, tf)])
                        ).decode(),
                    }
                    for tf, last in held.last_ts.items()
                },
            }
        )

    def apply(self, bars: Sequence[PendingBar]) -> list[IndicatorRecord]:
        """Fold the bars in (per timeframe, in rounds across instruments); one record each."""
        now = time.time_ns()
        by_tf: dict[str, dict[bytes, list[PendingBar]]] = defaultdict(lambda: defaultdict(list))
        for b in bars:
            by_tf[b.timeframe][b.key].append(b)
        out: list[IndicatorRecord] = []
        for tf, per_key in by_tf.items():
            st = self.state(tf)
            queues: list[tuple[int, list[PendingBar]]] = []
            for key, items in per_key.items():
                held = self.held[key]
                last = held.last_ts.get(tf)
                fresh: list[PendingBar] = []
                for b in sorted(items, key=lambda b: b.ts):
                    if last is not None and b.ts <= last:
                        SKIPPED.labels(tf).inc()
                        continue
                    fresh.append(b)
                    last = b.ts
                if fresh:
                    held.last_ts[tf] = fresh[-1].ts
                    queues.append((self.slot(key, tf), fresh))
            for r in range(max((len(q) for _, q in queues), default=0)):
                row = [(slot, q[r]) for slot, q in queues if len(q) > r]
                started = time.perf_counter()
                values = st.update(
                    np.array([s for s, _ in row], dtype=np.intp),
                    np.array([b.ts for _, b in row], dtype=np.int64),
                    np.array([b.open for _, b in row]),
                    np.array([b.high for _, b in row]),
                    np.array([b.low for _, b in row]),
                    np.array([b.close for _, b in row]),
                    np.array([b.volume for _, b in row]),
                )
                KERNEL_SECONDS.labels("indicators", "numpy").observe(time.perf_counter() - started)
                ROUND_ROWS.observe(len(row))
                for j, (_, b) in enumerate(row):
                    out.append(
                        IndicatorRecord(
                            venue=b.venue,
                            symbol=b.symbol,
                            timeframe=tf,
                            ts=b.ts,
                            flags=b.flags,
                            values={n: value_or_none(float(v[j])) for n, v in values.items()},
                            ts_emit=now,
                        )
                    )
            RECORDS.labels(tf).inc(sum(len(q) for _, q in queues))
        return out


class Indicators:
    """The stage's logic on the shared runner (agents.stage): the books, loaded from the
    table (or this take's staged state) when an instrument is first seen."""

    def __init__(self, stage: Stage, topics: Topics) -> None:
        self.stage = stage
        self.topics = topics
        self.books = Books()

    def reset(self) -> None:
        self.books = Books()

    def pending(self, ev: Any) -> tuple[bytes, list[PendingBar]] | None:
        """The bars of one record not applied before, with its instrument key."""
        try:
            batch = decode_batch(ev.value)
        except CodecError:
            return None  # the timescale sink dead-letters undecodable md.bars.v1 records
        if batch.kind is not Kind.BAR or not batch.timeframe:
            return None
        key = batch.key.encode()
        held = self.books.load(key, self.stage.stored(key))
        msg = ev.message
        if held.src is not None and held.src[0] == msg.partition and msg.offset <= held.src[1]:
            return None  # applied before this worker restarted (redelivery)
        held.src = (msg.partition, msg.offset)
        c = batch.cols
        rows = zip(
            c["ts_event"].tolist(),
            c["open"].tolist(),
            c["high"].tolist(),
            c["low"].tolist(),
            c["close"].tolist(),
            c["volume"].tolist(),
            c["flags"].tolist(),
            strict=True,
        )
        tf = batch.timeframe
        return key, [
            PendingBar(key, batch.venue, batch.symbol, tf, int(ts), o, h, lo, cl, v, int(f))
            for ts, o, h, lo, cl, v, f in rows
        ]

    def compute(self, events: Sequence[Any], out: Output) -> None:
        bars: list[PendingBar] = []
        touched: set[bytes] = set()
        for ev in events:
            got = self.pending(ev)
            if got is not None:
                touched.add(got[0])
                bars.extend(got[1])
        for record in self.books.apply(bars):
            out.send(self.topics.indicators, record.key.encode(), record.encode())
        for key in touched:
            out.states[key] = self.books.encode(key)


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    table = app.Table(
        "indicator-state",
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        use_partitioner=True,  # keyed like md.bars.v1 (venue:symbol): same partitions
    )
    stage = Stage(
        app,
        settings,
        name=STAGE,
        channel=own_channel(app, topics.bars),
        dlq=topics.dlq,
        max_records=settings.indicators_max_batch,
        linger_s=settings.indicators_max_wait_ms / 1000,
        table=table,
    )
    logic = Indicators(stage, topics)
    stage.run(logic)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def forget(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Another worker may own these instruments now; reload from the table when needed."""
        logic.reset()

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
