"""The work of the pipeline, one event at a time: what both per-record baselines run.

`bench.naive_faust` (Faust) and `bench.quix_pipeline` (Quix Streams) wrap this module, so
the two baselines differ only in the framework around it. Per event: validate (the rules
of `kernels.validation.Validator`, as scalar checks), fold the trade into the instrument's
1-minute bar and its 5m/15m/1h/1d roll-ups (`kernels.bars.MultiBook`), and for every bar
that closes: one indicator update (`kernels.indicators.IndicatorState`) and one damping
call on the window it completes (`kernels.damping.damp`). Outputs are buffered and written
with the project's own sink writers (TimescaleDB and Redis for ticks, bars, indicators
and signals), so the sinks cost the same as in the pipeline.

State lives in process memory (no changelog), which favours the baselines.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from agents.delivery import retry_forever
from kernels.bars import Bar, BarBook, Emitted, MultiBook, bars_to_columns
from kernels.damping import damp
from kernels.damping_state import Series, Window, to_signals
from kernels.indicators import IndicatorConfig, IndicatorState
from kernels.validation import ValidationRules
from schemas.batch import MarketEventBatch
from schemas.events import (
    NS_PER_S,
    SCHEMA_VERSION,
    SYMBOL_RE,
    TIMEFRAMES,
    VENUE_RE,
    BarFlag,
    Kind,
)
from schemas.indicator import IndicatorRecord, value_or_none
from schemas.signal import Signal
from streams.model.library import Library
from streams.settings import Settings
from streams.sinks.indicators import IndicatorRedisWriter, IndicatorTimescaleWriter
from streams.sinks.redis import RedisWriter
from streams.sinks.signals import SignalRedisWriter, SignalTimescaleWriter
from streams.sinks.timescale import TimescaleWriter

BASE_TF: Final = "1m"
HIGHER: Final = {tf: s * NS_PER_S for tf, s in TIMEFRAMES.items() if tf != BASE_TF}
TICK_COLUMNS: Final = ("ts_event", "ts_recv", "price", "size", "side", "trade_id", "seq")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class EventChecker:
    """`kernels.validation.Validator`'s rules for one trade, as scalar Python checks (the
    same bounds, `ValidationRules`, and order; the Kafka key is the baselines' own).

    Calling the vectorised Validator on a one-event batch would charge the baselines for
    NumPy's per-call overhead on 1-element arrays, which no per-record app would pay.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules = ValidationRules.from_settings(settings)
        self._seen: dict[str, tuple[set[int], deque[int]]] = {}

    def reason(self, doc: Any, now_ns: int) -> str | None:
        """None when valid, else the reason code of the first rule failed (Validator order)."""
        if not isinstance(doc, dict):
            return "malformed"
        if doc.get("v") != SCHEMA_VERSION:
            return "unknown_version"
        if doc.get("kind") != "trade":
            return "unknown_kind"  # the baselines handle trades only (all the input is)
        venue, symbol = doc.get("venue"), doc.get("symbol")
        if not isinstance(venue, str) or not isinstance(symbol, str):
            return "malformed"
        r = self.rules
        if not VENUE_RE.fullmatch(venue) or venue not in r.venues:
            return "unknown_venue"
        if not SYMBOL_RE.fullmatch(symbol):
            return "bad_symbol"
        if r.symbols and symbol not in r.symbols:
            return "unknown_symbol"
        ts: Any = doc.get("ts_event")
        recv: Any = doc.get("ts_recv")
        price: Any = doc.get("price")
        size: Any = doc.get("size")
        side: Any = doc.get("side")
        trade_id: Any = doc.get("trade_id")
        seq: Any = doc.get("seq")
        if not (
            _is_int(ts)
            and _is_int(recv)
            and _is_num(price)
            and _is_num(size)
            and (side is None or _is_int(side))
            and (trade_id is None or _is_int(trade_id))
            and (seq is None or _is_int(seq))
        ):
            return "wrong_type"
        if ts <= 0 or recv <= 0:
            return "bad_timestamp"
        if ts < r.min_event_time_ns or recv < r.min_event_time_ns:
            return "implausible_timestamp"
        if max(ts, recv) > now_ns + r.max_future_skew_ns:
            return "future_timestamp"
        if r.max_age_ns and ts < now_ns - r.max_age_ns:
            return "stale_timestamp"
        if recv < ts - r.max_recv_before_event_ns:
            return "recv_before_event"
        if not math.isfinite(price):
            return "non_finite_price"
        if price <= 0:
            return "non_positive_price"
        if not r.min_price <= price <= r.max_price:
            return "price_out_of_range"
        if not math.isfinite(size):
            return "non_finite_size"
        if math.copysign(1.0, size) < 0:
            return "negative_size"
        if size > r.max_size or 0 < size < r.min_size:
            return "size_out_of_range"
        if side is not None and not -1 <= side <= 1:
            return "bad_side"
        if trade_id is None or trade_id < 0:
            return "missing_trade_id"
        if trade_id > r.max_event_id or (seq is not None and not -1 <= seq <= r.max_event_id):
            return "id_out_of_range"
        return self._duplicate(f"{venue}:{symbol}", trade_id)

    def _duplicate(self, key: str, trade_id: int) -> str | None:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = (set(), deque())
        ids, order = seen
        if trade_id in ids:
            return "duplicate_trade_id"
        ids.add(trade_id)
        order.append(trade_id)
        if len(order) > self.settings.dedup_window:
            ids.discard(order.popleft())
        return None


def add_trade(book: BarBook, ts: int, price: float, size: float, wall_ns: int) -> list[Bar]:
    """`BarBook.add_trades` for a single trade, without NumPy; returns corrected bars."""
    start = ts // book.period_ns * book.period_ns
    if start + book.period_ns <= book.closed_through:
        # a late tick for a closed bar: rare, so take the book's own correction path
        corrections, _ = book.add_trades(
            np.array([ts], dtype=np.int64), np.array([price]), np.array([size]), wall_ns
        )
        return corrections
    part = Bar(start, price, price, price, price, size, 1, price * size, ts, ts)
    bar = book.forming.get(start)
    if bar is None:
        if start in book.gap_starts:
            part.flags |= BarFlag.GAP
        book.forming[start] = part
    else:
        bar.merge(part)
    if ts > book.max_ts:
        book.max_ts, book.wall_at_max = ts, wall_ns
    return []


@dataclass
class Outcome:
    """What one event (or one idle sweep) produced."""

    reason: str | None = None  # dead-letter reason; None when the event was accepted
    bars: list[MarketEventBatch] = field(default_factory=list)  # one record per timeframe
    indicators: list[IndicatorRecord] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)


class PerRecordCore:
    """Validate → bars → indicators → damping for one event at a time (no I/O)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.checker = EventChecker(settings)
        self.books: dict[str, MultiBook] = {}
        self.indicators: dict[str, IndicatorState] = {}
        self.slots: dict[tuple[str, str], int] = {}
        self.series: dict[tuple[str, str], Series] = {}
        self.window = settings.damping_window
        self.library = Library.default(self.window)
        self._period_ns = TIMEFRAMES[BASE_TF] * NS_PER_S
        self._grace_ns = settings.bar_grace_ms * 1_000_000
        self._horizon = settings.bar_correction_horizon_min
        self._keep_ns = self._horizon * 60 * NS_PER_S

    def book(self, key: str) -> MultiBook:
        book = self.books.get(key)
        if book is None:
            base = BarBook(
                period_ns=self._period_ns, grace_ns=self._grace_ns, horizon=self._horizon
            )
            book = self.books[key] = MultiBook.new(base, BASE_TF, HIGHER, keep_ns=self._keep_ns)
        return book

    def trade(self, doc: Any, now_ns: int) -> Outcome:
        """One decoded event; accepted trades are folded into the bars."""
        reason = self.checker.reason(doc, now_ns)
        if reason is not None:
            return Outcome(reason=reason)
        venue, symbol = doc["venue"], doc["symbol"]
        key = f"{venue}:{symbol}"
        book = self.book(key)
        ts, price, size = doc["ts_event"], float(doc["price"]), float(doc["size"])
        fixed: Emitted = {}
        start = ts // book.base.period_ns * book.base.period_ns
        if start + book.base.period_ns <= book.base.closed_through:
            fixed, _ = book.add_trades(  # late: the book's own correction path (rare)
                np.array([ts], dtype=np.int64), np.array([price]), np.array([size]), now_ns
            )
        else:
            add_trade(book.base, ts, price, size, now_ns)
        closed = book.close_due(None)
        return self._derive(key, venue, symbol, closed, fixed)

    def close_idle(self, wall_ns: int) -> Outcome:
        """Close bars on wall time once the input went quiet (as `agents.bars`' timer)."""
        out = Outcome()
        for key, book in list(self.books.items()):
            closed = book.close_due(wall_ns)
            if closed:
                venue, _, symbol = key.partition(":")
                got = self._derive(key, venue, symbol, closed, {})
                out.bars += got.bars
                out.indicators += got.indicators
                out.signals += got.signals
        return out

    def _derive(
        self, key: str, venue: str, symbol: str, closed: Emitted, fixed: Emitted
    ) -> Outcome:
        out = Outcome()
        for tf in TIMEFRAMES:
            bars = closed.get(tf, []) + fixed.get(tf, [])
            if not bars:
                continue
            cols = bars_to_columns(bars)
            cols["ts_recv"] = np.full(len(bars), time.time_ns(), dtype=np.int64)
            out.bars.append(
                MarketEventBatch.from_columns(Kind.BAR, venue, symbol, cols, timeframe=tf)
            )
            for bar in closed.get(tf, []):  # a closed bar is final for indicators (§6)
                out.indicators.append(self._indicator(key, venue, symbol, tf, bar))
            for bar in bars:
                out.signals += self._damp(key, venue, symbol, tf, bar)
        return out

    def _indicator(self, key: str, venue: str, symbol: str, tf: str, bar: Bar) -> IndicatorRecord:
        st = self.indicators.get(tf)
        if st is None:
            st = self.indicators[tf] = IndicatorState(IndicatorConfig())
        slot = self.slots.get((key, tf))
        if slot is None:
            slot = self.slots[(key, tf)] = int(st.add_instruments(1)[0])
        values = st.update(
            np.array([slot], dtype=np.intp),
            np.array([bar.start], dtype=np.int64),
            np.array([bar.open]),
            np.array([bar.high]),
            np.array([bar.low]),
            np.array([bar.close]),
            np.array([bar.volume]),
        )
        return IndicatorRecord(
            venue=venue,
            symbol=symbol,
            timeframe=tf,
            ts=bar.start,
            flags=bar.flags,
            values={n: value_or_none(float(v[0])) for n, v in values.items()},
            ts_emit=time.time_ns(),
        )

    def _damp(self, key: str, venue: str, symbol: str, tf: str, bar: Bar) -> list[Signal]:
        series = self.series.get((key, tf))
        if series is None:
            series = self.series[(key, tf)] = Series()
        ends = series.apply(bar.start, bar.close, self.window)
        if not ends:
            return []
        windows = [
            Window(venue, symbol, tf, series.ts[e], series.window_at(e, self.window)) for e in ends
        ]
        result = damp(
            np.array([w.closes for w in windows], dtype=np.float64),
            self.library.paths,
            backend="numpy",
            library_version=self.library.version,
        )
        return to_signals(windows, result, self.window, time.time_ns())


@dataclass
class Pending:
    """One write's worth of outputs."""

    batches: list[MarketEventBatch]
    indicators: list[IndicatorRecord]
    signals: list[Signal]


class SinkBuffer:
    """Outputs buffered per instrument and written with the pipeline's own writers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writers: tuple[tuple[str, Any, Callable[[Pending], Sequence[Any]]], ...] = (
            ("timescale", TimescaleWriter(settings), lambda p: p.batches),
            ("redis", RedisWriter(settings), lambda p: p.batches),
            ("indicators-timescale", IndicatorTimescaleWriter(settings), lambda p: p.indicators),
            ("indicators-redis", IndicatorRedisWriter(settings), lambda p: p.indicators),
            ("signals-timescale", SignalTimescaleWriter(settings), lambda p: p.signals),
            ("signals-redis", SignalRedisWriter(settings), lambda p: p.signals),
        )
        self.ticks: dict[tuple[str, str], list[list[Any]]] = {}
        self.derived = Pending([], [], [])
        self.pending = 0  # events and derived records buffered
        self.since = time.monotonic()

    def _touch(self) -> None:
        if not self.pending:
            self.since = time.monotonic()

    def add_tick(self, doc: dict[str, Any]) -> None:
        """An accepted trade (a decoded event) as a ticks row."""
        self._touch()
        key = (doc["venue"], doc["symbol"])
        rows = self.ticks.get(key)
        if rows is None:
            rows = self.ticks[key] = []
        seq, trade_id = doc.get("seq"), doc["trade_id"]
        rows.append(
            [doc["ts_event"], doc["ts_recv"], float(doc["price"]), float(doc["size"]),
             doc.get("side") or 0, trade_id, -1 if seq is None else seq]
        )  # fmt: skip
        self.pending += 1

    def add(self, out: Outcome) -> None:
        if out.bars or out.indicators or out.signals:
            self._touch()
            self.derived.batches += out.bars
            self.derived.indicators += out.indicators
            self.derived.signals += out.signals
            self.pending += len(out.bars) + len(out.indicators) + len(out.signals)

    def take(self) -> Pending | None:
        """Everything buffered, as one write; None when empty."""
        if not self.pending:
            return None
        taken = self.derived
        for (venue, symbol), rows in self.ticks.items():
            cols = dict(zip(TICK_COLUMNS, zip(*rows, strict=True), strict=True))
            taken.batches.append(MarketEventBatch.from_columns(Kind.TRADE, venue, symbol, cols))
        self.ticks, self.derived, self.pending = {}, Pending([], [], []), 0
        return taken

    async def write(self, pending: Pending) -> None:
        """All six writers concurrently; each retried until it commits."""

        async def one(writer: Any, items: Sequence[Any]) -> dict[str, int]:
            await writer.start()
            result: dict[str, int] = await writer.write(items)
            return result

        jobs: list[Awaitable[dict[str, int]]] = []
        for name, writer, items in self.writers:
            got = items(pending)
            if got:
                attempt = functools.partial(one, writer, got)
                jobs.append(retry_forever(name, attempt, self.settings.sink_retry_max_s))
        await asyncio.gather(*jobs)

    async def close(self) -> None:
        for _, writer, _ in self.writers:
            await writer.close()
