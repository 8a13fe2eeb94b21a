"""Event-time OHLCV bars: vectorised aggregation of a batch, merged into per-instrument state.

Ordering rule (also what a reference computation must do): within a bar, `open` is the
price of the earliest event time and `close` of the latest; ties go to arrival order, so
`open` is the first-arrived of the earliest and `close` the last-arrived of the latest.

A bar [start, start+period) closes once the instrument's watermark passes its end. The
watermark is the largest event time seen minus the grace period; for an instrument that is
idle — no more input is waiting, which only the caller can know — it also advances with the
wall time elapsed since that event, so a quiet instrument's bars still close. A tick for an already
closed bar produces a corrected bar (flagged) while the bar is within the correction
horizon; beyond it the tick is reported as uncorrectable so the caller can dead-letter it.

Higher timeframes (`MultiBook`, `Rollup`) are rolled up from CLOSED 1m bars, never from
ticks, and close when the 1m watermark passes their end; a late tick that corrects a 1m
bar is folded into the higher bars too (CORRECTED when they had already closed).

Flags are `schemas.events.BarFlag` (docs/ARCHITECTURE.md#bars). `Outgoing` gathers what one
instrument's take closed or corrected into its md.bars.v1 records, one per timeframe.

Pure compute: no I/O; imports nothing of the project but schemas.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from schemas.batch import MarketEventBatch
from schemas.events import TIMEFRAMES, BarFlag, Kind


@dataclass(slots=True)
class Bar:
    start: int  # ns, bar open time
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int
    notional: float  # Σ price·size, for the VWAP
    first_ts: int
    last_ts: int
    flags: int = 0

    @property
    def vwap(self) -> float:
        return self.notional / self.volume if self.volume > 0 else float("nan")

    def merge(self, other: Bar) -> None:
        """Fold a later-arrived partial bar of the same period into this one."""
        if other.first_ts < self.first_ts:
            self.open, self.first_ts = other.open, other.first_ts
        if other.last_ts >= self.last_ts:
            self.close, self.last_ts = other.close, other.last_ts
        self.high = max(self.high, other.high)
        self.low = min(self.low, other.low)
        self.volume += other.volume
        self.trades += other.trades
        self.notional += other.notional
        self.flags |= other.flags


def aggregate(
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    size: npt.NDArray[np.float64],
    period_ns: int,
) -> list[Bar]:
    """Partial bars of one batch, one per period touched, in time order."""
    if len(ts) == 0:
        return []
    order = np.argsort(ts, kind="stable")
    ts, price, size = ts[order], price[order], size[order]
    bucket = (ts // period_ns) * period_ns
    starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
    ends = np.concatenate((starts[1:], [len(ts)])) - 1
    high = np.maximum.reduceat(price, starts)
    low = np.minimum.reduceat(price, starts)
    volume = np.add.reduceat(size, starts)
    notional = np.add.reduceat(price * size, starts)
    counts = np.diff(np.concatenate((starts, [len(ts)])))
    return [
        Bar(
            start=int(bucket[s]),
            open=float(price[s]),
            high=float(high[k]),
            low=float(low[k]),
            close=float(price[e]),
            volume=float(volume[k]),
            trades=int(counts[k]),
            notional=float(notional[k]),
            first_ts=int(ts[s]),
            last_ts=int(ts[e]),
        )
        for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))
    ]


class _Timeframe(Protocol):
    period_ns: int
    forming: dict[int, Bar]
    closed: dict[int, Bar]
    closed_through: int
    gap_starts: set[int]


def flag_gap(book: _Timeframe, ts: int) -> Bar | None:
    """Flag the bar of `book` holding `ts` (or the one it will form); a bar already closed
    is flagged GAP and CORRECTED and returned for re-emission, once."""
    start = (ts // book.period_ns) * book.period_ns
    if start + book.period_ns <= book.closed_through:
        bar = book.closed.get(start)
        if bar is None or bar.flags & BarFlag.GAP:
            return None
        bar.flags |= BarFlag.GAP | BarFlag.CORRECTED
        return bar
    book.gap_starts.add(start)
    if start in book.forming:
        book.forming[start].flags |= BarFlag.GAP
    return None


def close_passed(book: _Timeframe, wm: int, keep: int, *, advance: bool = True) -> list[Bar]:
    """Close and return, in time order, the forming bars of `book` that end at or before the
    watermark `wm`; with `advance`, every period ending by then counts as closed (a tick for
    it is a correction). The newest `keep` closed bars are kept for corrections."""
    due = sorted(s for s in book.forming if s + book.period_ns <= wm)
    out = [book.forming.pop(s) for s in due]
    if advance:
        book.closed_through = max(book.closed_through, (wm // book.period_ns) * book.period_ns)
    for bar in out:
        book.closed[bar.start] = bar
    if len(book.closed) > keep:
        for s in sorted(book.closed)[: len(book.closed) - keep]:
            del book.closed[s]
    book.gap_starts = {s for s in book.gap_starts if s + book.period_ns > book.closed_through}
    return out


@dataclass
class BarBook:
    """Forming bars of one instrument and one timeframe, with its watermark."""

    period_ns: int
    grace_ns: int
    horizon: int = 1440  # closed bars kept for corrections
    forming: dict[int, Bar] = field(default_factory=dict)
    closed: dict[int, Bar] = field(default_factory=dict)
    closed_through: int = -(2**62)  # every bar ending at or before this is closed
    max_ts: int = -(2**62)
    wall_at_max: int = 0
    gap_starts: set[int] = field(default_factory=set)
    # Partial bars merged into already closed bars since the caller last took them: the
    # rollups fold exactly these deltas into their own closed bars (see MultiBook).
    late_parts: list[Bar] = field(default_factory=list)

    def watermark(self, idle_wall_ns: int | None) -> int:
        """`idle_wall_ns`: the wall time now if the instrument is idle, else None."""
        idle = 0 if idle_wall_ns is None else max(0, idle_wall_ns - self.wall_at_max)
        return self.max_ts + idle - self.grace_ns

    def add_trades(
        self,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
        wall_ns: int,
    ) -> tuple[list[Bar], int]:
        """Apply trades; returns (corrected bars to re-emit, number of uncorrectable ticks)."""
        corrections: dict[int, Bar] = {}
        uncorrectable = 0
        for part in aggregate(ts, price, size, self.period_ns):
            if part.start + self.period_ns <= self.closed_through:
                fixed = self._correct(part)
                if fixed is None:
                    uncorrectable += part.trades
                else:
                    corrections[fixed.start] = fixed
                continue
            if part.start in self.gap_starts:
                part.flags |= BarFlag.GAP
            bar = self.forming.get(part.start)
            if bar is None:
                self.forming[part.start] = part
            else:
                bar.merge(part)
        batch_max = int(ts.max()) if len(ts) else self.max_ts
        if batch_max > self.max_ts:
            self.max_ts, self.wall_at_max = batch_max, wall_ns
        return list(corrections.values()), uncorrectable

    def mark_gap(self, ts: int) -> Bar | None:
        """Flag the bar holding `ts`; returns a corrected bar if that bar already closed."""
        return flag_gap(self, ts)

    def close_due(self, idle_wall_ns: int | None) -> list[Bar]:
        """Close and return, in time order, every forming bar the watermark has passed."""
        wm = self.watermark(idle_wall_ns)
        # Before the first event the watermark is no time at all: no period is over.
        return close_passed(self, wm, self.horizon, advance=self.max_ts > -(2**62))

    def _correct(self, part: Bar) -> Bar | None:
        oldest = min(self.closed) if self.closed else None
        bar = self.closed.get(part.start)
        if bar is None and (oldest is None or part.start < oldest):
            return None  # beyond the correction horizon: we no longer know the bar
        self.late_parts.append(replace(part))
        if bar is None:
            self.closed[part.start] = bar = part
        else:
            bar.merge(part)
        bar.flags |= BarFlag.CORRECTED
        return bar

    # ---- durable state (forming bars and watermark; corrections cache is best-effort) ----
    def to_state(self) -> dict[str, Any]:
        return {
            "forming": [asdict(b) for b in self.forming.values()],
            "closed_through": self.closed_through,
            "max_ts": self.max_ts,
            "gap_starts": sorted(self.gap_starts),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], *, period_ns: int, grace_ns: int, horizon: int, wall_ns: int
    ) -> BarBook:
        book = cls(period_ns=period_ns, grace_ns=grace_ns, horizon=horizon)
        book.forming = {b["start"]: Bar(**b) for b in state.get("forming", [])}
        book.closed_through = int(state.get("closed_through", book.closed_through))
        book.max_ts = int(state.get("max_ts", book.max_ts))
        book.wall_at_max = wall_ns
        book.gap_starts = set(state.get("gap_starts", []))
        return book


def bars_to_columns(bars: list[Bar]) -> dict[str, npt.NDArray[Any]]:
    """Columns of a `bar` record (schemas.batch COLUMNS[BAR]) for closed bars."""
    return {
        "ts_event": np.array([b.start for b in bars], dtype=np.int64),
        "open": np.array([b.open for b in bars]),
        "high": np.array([b.high for b in bars]),
        "low": np.array([b.low for b in bars]),
        "close": np.array([b.close for b in bars]),
        "volume": np.array([b.volume for b in bars]),
        "trades": np.array([b.trades for b in bars], dtype=np.int64),
        "vwap": np.array([b.vwap for b in bars]),
        "flags": np.array([b.flags for b in bars], dtype=np.int64),
    }


@dataclass
class Rollup:
    """Bars of one higher timeframe folded from closed 1m bars (never from ticks).

    Folding a closed 1m bar, or the late partial bar that corrected one, with `Bar.merge`
    gives exactly the bar the ticks would have made: open/close by event time, high/low
    extremes and sums are associative. Only GAP is inherited from the 1m bars; CORRECTED
    on a rollup bar means the rollup bar itself changed after it was emitted.
    """

    period_ns: int
    keep: int  # closed bars kept for corrections
    forming: dict[int, Bar] = field(default_factory=dict)
    closed: dict[int, Bar] = field(default_factory=dict)
    closed_through: int = -(2**62)
    gap_starts: set[int] = field(default_factory=set)

    def fold(self, part: Bar) -> Bar | None:
        """Fold a closed 1m bar or a late part; returns the rollup bar if it was already closed."""
        start = (part.start // self.period_ns) * self.period_ns
        piece = replace(part, start=start, flags=part.flags & BarFlag.GAP)
        if start + self.period_ns <= self.closed_through:
            bar = self.closed.get(start)
            if bar is None:
                return None  # beyond what we keep (or lost with a restart): best effort
            bar.merge(piece)
            bar.flags |= BarFlag.CORRECTED
            return bar
        if start in self.gap_starts:
            piece.flags |= BarFlag.GAP
        bar = self.forming.get(start)
        if bar is None:
            self.forming[start] = piece
        else:
            bar.merge(piece)
        return None

    def mark_gap(self, ts: int) -> Bar | None:
        """As `BarBook.mark_gap`, for this timeframe."""
        return flag_gap(self, ts)

    def close_due(self, wm: int) -> list[Bar]:
        """Close the bars the 1m watermark `wm` has passed (their 1m bars are all folded)."""
        return close_passed(self, wm, self.keep)

    def to_state(self) -> dict[str, Any]:
        return {
            "forming": [asdict(b) for b in self.forming.values()],
            "closed_through": self.closed_through,
            "gap_starts": sorted(self.gap_starts),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, period_ns: int, keep: int) -> Rollup:
        up = cls(period_ns=period_ns, keep=keep)
        up.forming = {b["start"]: Bar(**b) for b in state.get("forming", [])}
        up.closed_through = int(state.get("closed_through", up.closed_through))
        up.gap_starts = set(state.get("gap_starts", []))
        return up


Emitted = dict[str, list[Bar]]  # timeframe → bars (closed or corrected), in time order


@dataclass
class MultiBook:
    """One instrument's 1m `BarBook` plus its higher timeframes rolled up from closed 1m bars.

    A higher bar closes when the 1m watermark passes its end, in the same call that closes
    its last 1m bar. A corrected 1m bar corrects the higher bars holding it (flag
    BarFlag.CORRECTED); a gap marker flags every timeframe. All of it is one durable state.
    """

    base: BarBook
    base_tf: str
    rollups: dict[str, Rollup]

    @classmethod
    def new(
        cls, base: BarBook, base_tf: str, periods_ns: dict[str, int], *, keep_ns: int
    ) -> MultiBook:
        """`periods_ns`: the higher timeframes; `keep_ns`: how far back they accept corrections."""
        ups = {
            tf: Rollup(period_ns=p, keep=max(1, keep_ns // p + 1)) for tf, p in periods_ns.items()
        }
        return cls(base=base, base_tf=base_tf, rollups=ups)

    def _fold_late(self, out: Emitted) -> None:
        parts, self.base.late_parts = self.base.late_parts, []
        for tf, up in self.rollups.items():
            fixed: dict[int, Bar] = {}
            for part in parts:
                bar = up.fold(part)
                if bar is not None:
                    fixed[bar.start] = bar
            if fixed:
                out.setdefault(tf, []).extend(fixed[s] for s in sorted(fixed))

    def add_trades(
        self,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
        wall_ns: int,
    ) -> tuple[Emitted, int]:
        """Apply trades; returns (corrected bars per timeframe, uncorrectable ticks)."""
        fixed, lost = self.base.add_trades(ts, price, size, wall_ns)
        out: Emitted = {self.base_tf: fixed} if fixed else {}
        self._fold_late(out)
        return out, lost

    def mark_gap(self, ts: int) -> Emitted:
        """Flag every timeframe's bar holding `ts`; returns the closed bars that changed."""
        out: Emitted = {}
        fixed = self.base.mark_gap(ts)
        if fixed is not None:
            out[self.base_tf] = [fixed]
        for tf, up in self.rollups.items():
            bar = up.mark_gap(ts)
            if bar is not None:
                out[tf] = [bar]
        return out

    def close_due(self, idle_wall_ns: int | None) -> Emitted:
        """Close due 1m bars, fold them up, then close the higher bars they complete."""
        closed = self.base.close_due(idle_wall_ns)
        out: Emitted = {self.base_tf: closed} if closed else {}
        if self.base.max_ts <= -(2**62):
            return out
        wm = self.base.watermark(idle_wall_ns)
        for tf, up in self.rollups.items():
            for bar in closed:
                up.fold(bar)
            done = up.close_due(wm)
            if done:
                out[tf] = done
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            **self.base.to_state(),
            "rollups": {tf: up.to_state() for tf, up in self.rollups.items()},
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        *,
        base: BarBook,
        base_tf: str,
        periods_ns: dict[str, int],
        keep_ns: int,
    ) -> MultiBook:
        """`base` restored by `BarBook.from_state` from the same state."""
        book = cls.new(base, base_tf, periods_ns, keep_ns=keep_ns)
        for tf, up_state in state.get("rollups", {}).items():
            if tf in book.rollups:
                up = book.rollups[tf]
                book.rollups[tf] = Rollup.from_state(up_state, period_ns=up.period_ns, keep=up.keep)
        return book


@dataclass(slots=True)
class Outgoing:
    """One instrument's share of a take: its book and the bars it will send, one version
    of each (the latest: a bar corrected by several records goes out once)."""

    book: MultiBook
    venue: str
    symbol: str
    bars: dict[str, dict[int, Bar]] = field(default_factory=dict)  # timeframe → start → bar
    closed: dict[str, int] = field(default_factory=dict)  # timeframe → bars closed

    def add(self, bars: Emitted, *, closed: bool = False) -> None:
        for tf, got in bars.items():
            held = self.bars.setdefault(tf, {})
            for bar in got:
                held[bar.start] = bar
            if closed:
                self.closed[tf] = self.closed.get(tf, 0) + len(got)

    @property
    def corrected(self) -> int:
        """Bars sent again after they closed."""
        return sum(map(len, self.bars.values())) - sum(self.closed.values())

    def records(self, now_ns: int) -> list[bytes]:
        """One md.bars.v1 record per timeframe, its bars in time order, emitted at `now_ns`."""
        out = []
        for tf in TIMEFRAMES:
            held = self.bars.get(tf)
            if not held:
                continue
            bars = [held[start] for start in sorted(held)]
            cols = bars_to_columns(bars)
            cols["ts_recv"] = np.full(len(bars), now_ns, dtype=np.int64)
            batch = MarketEventBatch.from_columns(
                Kind.BAR, self.venue, self.symbol, cols, timeframe=tf
            )
            out.append(batch.encode(bars_out=now_ns))
        return out
