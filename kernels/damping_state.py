"""The damping stage's per-instrument state: held closes, the windows they form, and the
signals a damped batch of windows becomes (docs/ARCHITECTURE.md#damping-stage).

Per instrument and timeframe a `Series` holds the last 2W − 1 closes (W the window), so
every window a new or corrected bar can still change is at hand. `InstrumentState` is the
value of the `damping-state` table: the series of one instrument, per timeframe, and the
md.bars.v1 position of the last record applied; its JSON encoding is the changelog format.

Pure compute: no I/O; imports nothing of the project but kernels and schemas.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from kernels.damping import DampingResult
from schemas.batch import MarketEventBatch
from schemas.signal import Signal


@dataclass
class Series:
    """The held bars of one instrument and timeframe, oldest first (open time ns, close)."""

    ts: list[int] = field(default_factory=list)
    close: list[float] = field(default_factory=list)

    def apply(self, ts: int, close: float, window: int) -> list[int]:
        """Add or replace one closed bar; returns the indices of the windows' last bars that
        this changed (each a window of `window` closes ending there)."""
        keep = 2 * window - 1
        i = bisect.bisect_left(self.ts, ts)
        if i < len(self.ts) and self.ts[i] == ts:
            if self.close[i] == close:
                return []  # the same bar again (a re-emission): nothing changed
            self.close[i] = close
        elif i == 0 and len(self.ts) >= keep:
            return []  # older than the held history
        else:
            self.ts.insert(i, ts)
            self.close.insert(i, close)
            drop = len(self.ts) - keep
            if drop > 0:
                del self.ts[:drop], self.close[:drop]
                i -= drop
        last = len(self.ts) - 1
        return list(range(max(i, window - 1), min(i + window - 1, last) + 1))

    def window_at(self, end: int, window: int) -> list[float]:
        return self.close[end - window + 1 : end + 1]


@dataclass(frozen=True)
class Window:
    """One window of closes to damp, named like the signal it becomes."""

    venue: str
    symbol: str
    timeframe: str
    ts: int  # open time of the last bar
    closes: list[float]


@dataclass
class InstrumentState:
    """Table value per instrument key: its series per timeframe and the last record applied."""

    series: dict[str, Series] = field(default_factory=dict)
    src: tuple[int, int] | None = None  # (partition, offset) in md.bars.v1

    def fold(self, batch: MarketEventBatch, window: int) -> list[Window]:
        """Apply one bar record in time order; the windows it completed or changed, each
        as it stands after the bar that touched it (a later one may replace it)."""
        tf = batch.timeframe
        assert tf is not None, "bar batches carry their timeframe"
        series = self.series.setdefault(tf, Series())
        order = np.argsort(batch.cols["ts_event"], kind="stable")
        out: list[Window] = []
        for ts, close in zip(
            batch.cols["ts_event"][order].tolist(), batch.cols["close"][order].tolist(), strict=True
        ):
            for end in series.apply(int(ts), float(close), window):
                closes = series.window_at(end, window)
                out.append(Window(batch.venue, batch.symbol, tf, series.ts[end], closes))
        return out

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "src": self.src,
                "series": {tf: {"ts": s.ts, "close": s.close} for tf, s in self.series.items()},
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> InstrumentState:
        doc = orjson.loads(data)
        series = {
            tf: Series([int(t) for t in s["ts"]], [float(c) for c in s["close"]])
            for tf, s in doc.get("series", {}).items()
        }
        src = doc.get("src")
        return cls(series, (int(src[0]), int(src[1])) if src else None)


def to_signals(
    windows: Sequence[Window], result: DampingResult, window: int, ts_emit: int
) -> list[Signal]:
    """Row i of `result` is `windows[i]`: one Signal each, stamped `ts_emit`."""
    version = result.library_version or "default"
    return [
        Signal(
            venue=w.venue,
            symbol=w.symbol,
            timeframe=w.timeframe,
            ts=w.ts,
            window=window,
            entropy=float(result.entropy[i]),
            coherence=float(result.coherence[i]),
            stability=float(result.stability[i]),
            lam=float(result.lam[i]),
            value=float(result.value[i]),
            confidence=float(result.confidence[i]),
            iterations=int(result.iterations[i]),
            converged=bool(result.converged[i]),
            collapse=bool(result.collapse[i]),
            library_version=version,
            backend=result.backend,
            ts_emit=ts_emit,
        )
        for i, w in enumerate(windows)
    ]
