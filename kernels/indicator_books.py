"""The indicators stage's books: every instrument of a worker as a slot of one
`IndicatorState` per timeframe, and the table value each instrument is saved as
(docs/ARCHITECTURE.md#indicators).

`Books.apply` folds a take's bars in rounds across instruments — round r holds the r-th new
bar of every instrument that has one — so bars that close together cost one vectorised
update. A bar whose open time is not after the last one applied for its instrument and
timeframe is skipped (closed bars are final) and counted in the returned `Applied`, which
the stage turns into metrics.

Table value per instrument (JSON; the changelog format): per timeframe the base64
`IndicatorState.to_bytes` snapshot and the open time of the last bar applied, plus the
md.bars.v1 position of the last record applied.

Pure compute: no I/O; imports nothing of the project but kernels and schemas.
"""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import orjson

from kernels.indicators import IndicatorConfig, IndicatorState
from schemas.batch import MarketEventBatch
from schemas.indicator import IndicatorRecord, value_or_none

# Fixed: the record format and the table's columns are this config's outputs.
CONFIG: Final = IndicatorConfig()


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


def pending_bars(batch: MarketEventBatch) -> list[PendingBar]:
    """The bars of one md.bars.v1 record, in the record's order."""
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
    key, tf = batch.key.encode(), str(batch.timeframe)
    return [
        PendingBar(key, batch.venue, batch.symbol, tf, int(ts), o, h, lo, cl, v, int(f))
        for ts, o, h, lo, cl, v, f in rows
    ]


@dataclass
class Held:
    """What the table holds for one instrument, besides the snapshots in the states."""

    src: tuple[int, int] | None = None  # (partition, offset) in md.bars.v1
    last_ts: dict[str, int] = field(default_factory=dict)  # timeframe → last bar applied


@dataclass
class Applied:
    """What one `Books.apply` did: its records, and per timeframe what to count."""

    records: list[IndicatorRecord] = field(default_factory=list)
    emitted: dict[str, int] = field(default_factory=dict)  # timeframe → records
    skipped: dict[str, int] = field(default_factory=dict)  # timeframe → bars not folded in
    rounds: list[tuple[int, float]] = field(default_factory=list)  # (rows, seconds) per update


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
        """The instrument's held state, loaded from its table value when first needed."""
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

    def _fresh(
        self, tf: str, key: bytes, items: list[PendingBar], done: Applied
    ) -> list[PendingBar]:
        """The bars after the last one applied for (key, tf), in time order; the rest counted."""
        held = self.held[key]
        last = held.last_ts.get(tf)
        fresh: list[PendingBar] = []
        for b in sorted(items, key=lambda b: b.ts):
            if last is not None and b.ts <= last:
                done.skipped[tf] = done.skipped.get(tf, 0) + 1
                continue
            fresh.append(b)
            last = b.ts
        if fresh:
            held.last_ts[tf] = fresh[-1].ts
        return fresh

    def apply(self, bars: Sequence[PendingBar], ts_emit: int) -> Applied:
        """Fold the bars in (per timeframe, in rounds across instruments); one record each,
        stamped `ts_emit`. Every bar's instrument must have been loaded."""
        by_tf: dict[str, dict[bytes, list[PendingBar]]] = defaultdict(lambda: defaultdict(list))
        for b in bars:
            by_tf[b.timeframe][b.key].append(b)
        done = Applied()
        for tf, per_key in by_tf.items():
            st = self.state(tf)
            queues: list[tuple[int, list[PendingBar]]] = []
            for key, items in per_key.items():
                fresh = self._fresh(tf, key, items, done)
                if fresh:
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
                done.rounds.append((len(row), time.perf_counter() - started))
                for j, (_, b) in enumerate(row):
                    done.records.append(
                        IndicatorRecord(
                            venue=b.venue,
                            symbol=b.symbol,
                            timeframe=tf,
                            ts=b.ts,
                            flags=b.flags,
                            values={n: value_or_none(float(v[j])) for n, v in values.items()},
                            ts_emit=ts_emit,
                        )
                    )
            done.emitted[tf] = sum(len(q) for _, q in queues)
        return done
