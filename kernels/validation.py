"""Validation rules of md.trades.v1 records (docs/OPERATIONS.md, "Validation"). Pure.

`Validator` judges a decoded `MarketEventBatch`: `record_reason` finds what is wrong with
the whole record (instrument, Kafka key, timeframe, gap reason), `event_reasons` what is
wrong with each event (the first failing rule names its reason code). Its only state is the
duplicate-trade-id memory (kernels.dedup). The bounds come from `ValidationRules`, built from
the settings by `ValidationRules.from_settings`; nothing here does I/O or imports the agents
or streams packages.

The point of the numeric bounds besides plausibility: whatever passes validation is safe for
the arithmetic of the later stages (bars, roll-ups, VWAP, indicators, damping in float64 or
float32). Every price, size and volume that passes is finite and within
[`MIN_BOUND`, `MAX_BOUND`] = [1e-30, 1e30] (or 0 for sizes), so it is finite in float32
too, a product price·size is at most 1e60, and a sum of such products over any number of
events a stage could ever see (1e200 of them) stays below float64's 1.8e308: no notional,
volume, VWAP, indicator sum or square can overflow to inf. The default bounds (price ≤ 1e9,
size ≤ 1e15) keep a day's Σ price·size of an instrument below 1e24 · 1e11 trades = 1e35.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from kernels.dedup import SeenIds
from schemas.batch import MarketEventBatch
from schemas.envelope import INT64_MAX, INT64_MIN, brief, clip
from schemas.events import (
    GAP_REASONS,
    MAX_SYMBOL_CHARS,
    MAX_VENUE_CHARS,
    NS_PER_S,
    SYMBOL_RE,
    TIMEFRAMES,
    VENUE_RE,
    BarFlag,
    Kind,
)

__all__ = ["MAX_BOUND", "MIN_BOUND", "RuleSettings", "ValidationRules", "Validator", "source_id"]

# No configured bound may exceed this: see the module doc (float32-finite, products ≤ 1e60).
MAX_BOUND: Final = 1e30
MIN_BOUND: Final = 1e-30
# A venue's VWAP may round a hair outside [low, high] (a bar of one price): relative slack.
VWAP_SLACK: Final = 1e-9
_FLAGS: Final = int(BarFlag.GAP | BarFlag.CORRECTED)  # every flag a bar may carry

Mask = npt.NDArray[np.bool_]
F8 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int64]
Cols = dict[str, npt.NDArray[Any]]
Rule = tuple[str, Mask]


class RuleSettings(Protocol):
    """The settings `ValidationRules.from_settings` reads (streams.settings.Settings)."""

    @property
    def venues(self) -> tuple[str, ...]: ...
    @property
    def symbols(self) -> tuple[str, ...]: ...
    @property
    def max_future_skew_ms(self) -> int: ...
    @property
    def max_age_s(self) -> int: ...
    @property
    def min_event_time_s(self) -> int: ...
    @property
    def max_recv_before_event_ms(self) -> int: ...
    @property
    def min_price(self) -> float: ...
    @property
    def max_price(self) -> float: ...
    @property
    def min_size(self) -> float: ...
    @property
    def max_size(self) -> float: ...
    @property
    def max_volume(self) -> float: ...
    @property
    def max_quote_spread(self) -> float: ...
    @property
    def max_bar_range(self) -> float: ...
    @property
    def max_event_id(self) -> int: ...
    @property
    def dedup_window(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ValidationRules:
    """The bounds validation applies; times in ns. Checked when built, so a bound that would
    break the overflow guarantee (module doc) never reaches a running stage."""

    venues: frozenset[str]
    symbols: frozenset[str]  # empty: any well-formed BASE-QUOTE symbol
    max_future_skew_ns: int  # ts_event/ts_recv later than now + this: future_timestamp
    max_age_ns: int  # 0: no age limit
    min_event_time_ns: int  # earlier: a unit mistake (s, ms or µs written as ns)
    max_recv_before_event_ns: int  # ts_recv earlier than ts_event by more: recv_before_event
    min_price: float
    max_price: float
    min_size: float  # a size (volume) is 0 or at least this
    max_size: float
    max_volume: float
    max_quote_spread: float  # ask / bid at most this
    max_bar_range: float  # high / low at most this
    max_event_id: int  # trade ids, sequence numbers, a bar's trade count: 0..this
    dedup_window: int
    gap_reasons: frozenset[str] = GAP_REASONS

    def __post_init__(self) -> None:
        for name in ("min_price", "min_size"):
            value = getattr(self, name)
            if not MIN_BOUND <= value <= MAX_BOUND:
                raise ValueError(f"{name} must be within [{MIN_BOUND:g}, {MAX_BOUND:g}]")
        for name, low in (("max_price", self.min_price), ("max_size", self.min_size),
                          ("max_volume", self.min_size)):  # fmt: skip
            value = getattr(self, name)
            if not low <= value <= MAX_BOUND:
                raise ValueError(f"{name} must be within [{low:g}, {MAX_BOUND:g}]")
        for name in ("max_quote_spread", "max_bar_range"):
            value = getattr(self, name)
            if not 1.0 <= value <= MAX_BOUND:
                raise ValueError(f"{name} must be a ratio within [1, {MAX_BOUND:g}]")
        for name in ("max_future_skew_ns", "max_age_ns", "min_event_time_ns",
                     "max_recv_before_event_ns", "max_event_id"):  # fmt: skip
            value = getattr(self, name)
            if not 0 <= value <= INT64_MAX:
                raise ValueError(f"{name} must be within [0, 2**63 - 1]")
        if self.dedup_window < 1:
            raise ValueError("dedup_window must be >= 1")

    @classmethod
    def from_settings(cls, s: RuleSettings) -> ValidationRules:
        """The rules of `streams.settings.Settings` (`SEPSTREAM_*`, docs/OPERATIONS.md)."""
        return cls(
            venues=frozenset(s.venues),
            symbols=frozenset(s.symbols),
            max_future_skew_ns=s.max_future_skew_ms * 1_000_000,
            max_age_ns=s.max_age_s * NS_PER_S,
            min_event_time_ns=s.min_event_time_s * NS_PER_S,
            max_recv_before_event_ns=s.max_recv_before_event_ms * 1_000_000,
            min_price=s.min_price,
            max_price=s.max_price,
            min_size=s.min_size,
            max_size=s.max_size,
            max_volume=s.max_volume,
            max_quote_spread=s.max_quote_spread,
            max_bar_range=s.max_bar_range,
            max_event_id=s.max_event_id,
            dedup_window=s.dedup_window,
        )


def source_id(partition: int, offset: int) -> int:
    """One int for an input record's position (compact to keep per trade id)."""
    return (partition << 48) | offset


def _int64(value: int) -> int:
    """A threshold clamped into int64, so comparing it with an int64 column is exact."""
    return min(max(value, INT64_MIN), INT64_MAX)


class Validator:
    """The validation rules; pure apart from the duplicate-id memory it keeps.

    Never raises on a decoded batch (schemas.batch guarantees 1-D columns of n values of
    the right dtype): `event_reasons` returns exactly one reason (or None) per event.
    """

    def __init__(self, rules: ValidationRules) -> None:
        self.rules = rules
        self._seen: dict[str, SeenIds] = {}  # per instrument, fixed size
        self._anonymous = 0  # sources for callers that give none: each call its own record

    def record_reason(self, batch: MarketEventBatch, key: bytes | None) -> tuple[str, str] | None:
        """A reason shared by every event of the record, with a short detail, or None.

        `key` is the record's Kafka key: it must be the payload's `venue:symbol` (the
        partition, and so the instrument's state, is chosen by it), else `key_mismatch`;
        a record without one is `missing_key`.
        """
        r = self.rules
        venue, symbol = batch.venue, batch.symbol
        if len(venue) > MAX_VENUE_CHARS or not VENUE_RE.fullmatch(venue) or venue not in r.venues:
            return "unknown_venue", clip(venue)
        if len(symbol) > MAX_SYMBOL_CHARS or not SYMBOL_RE.fullmatch(symbol):
            return "bad_symbol", clip(symbol)
        if r.symbols and symbol not in r.symbols:
            return "unknown_symbol", symbol
        if key is None:
            return "missing_key", f"expected {batch.key}"
        if key != batch.key.encode():  # venue and symbol are ASCII here
            return "key_mismatch", f"{brief(key)} is not {batch.key}"
        if batch.kind is Kind.BAR and batch.timeframe not in TIMEFRAMES:
            return "unknown_timeframe", clip(str(batch.timeframe))
        if batch.kind is Kind.GAP and batch.reason not in r.gap_reasons:
            return "bad_gap_reason", clip(str(batch.reason))
        return None

    def event_reasons(
        self, batch: MarketEventBatch, now_ns: int, source: int | None = None
    ) -> list[str | None]:
        """Per event: None when valid, else the reason code of the first rule it fails.

        `source` identifies the input record (`source_id`): the same record read again gets
        the same answers, its own trade ids are not duplicates of themselves.
        """
        reasons: list[str | None] = [None] * len(batch)
        if len(batch) and (batch.bad_type is not None or not self._all_good(batch, now_ns)):
            # Something failed: name each event's first failing rule. Valid records, by far
            # the most, only pay for `_all_good`'s few reductions.
            c = batch.cols
            rules: list[Rule] = []
            if batch.bad_type is not None:
                rules.append(("wrong_type", batch.bad_type))
            rules += self._time_rules(c, now_ns)
            match batch.kind:
                case Kind.TRADE:
                    rules += self._trade_rules(c)
                case Kind.QUOTE:
                    rules += self._quote_rules(c)
                case Kind.BAR:
                    rules += self._bar_rules(c)
                case Kind.GAP:
                    pass
            for reason, failed in rules:
                for i in np.flatnonzero(failed).tolist():
                    if reasons[i] is None:
                        reasons[i] = reason
        if batch.kind is Kind.TRADE:
            if source is None:
                self._anonymous -= 1
                source = self._anonymous
            self._duplicates(batch, reasons, source)
        return reasons

    # ---- the fast check: every event passes every rule (min/max reductions, no masks) ----

    def _all_good(self, batch: MarketEventBatch, now_ns: int) -> bool:
        r = self.rules
        c = batch.cols
        ts, recv = c["ts_event"], c["ts_recv"]
        high = _int64(now_ns + r.max_future_skew_ns)
        oldest = _int64(now_ns - r.max_age_ns) if r.max_age_ns > 0 else r.min_event_time_ns
        if not (
            ts.min() >= max(r.min_event_time_ns, oldest)
            and ts.max() <= high
            and recv.min() >= r.min_event_time_ns
            and recv.max() <= high
            and (recv - ts).min() >= -r.max_recv_before_event_ns  # both in range: no wrap
        ):
            return False
        match batch.kind:
            case Kind.TRADE:
                side = c["side"]
                return (
                    self._prices_good(c["price"])
                    and self._sizes_good(r.max_size, c["size"])
                    and side.min() >= -1
                    and side.max() <= 1
                    and self._ids_good(c["trade_id"], 0)
                    and self._ids_good(c["seq"], -1)
                )
            case Kind.QUOTE:
                bp, ap = c["bid_price"], c["ask_price"]
                return (
                    self._prices_good(bp, ap)
                    and self._sizes_good(r.max_size, c["bid_size"], c["ask_size"])
                    and self._ids_good(c["seq"], -1)
                    and not self._quote_shape_bad(bp, ap).any()
                )
            case Kind.BAR:
                return (
                    self._prices_good(c["open"], c["high"], c["low"], c["close"])
                    and self._sizes_good(r.max_volume, c["volume"])
                    and self._ids_good(c["trades"], 0)
                    and not any(failed.any() for _, failed in self._bar_shape_rules(c))
                )
            case Kind.GAP:
                return True

    def _prices_good(self, *prices: F8) -> bool:
        lo, hi = self.rules.min_price, self.rules.max_price
        return all(p.min() >= lo and p.max() <= hi for p in prices)  # NaN fails

    def _sizes_good(self, top: float, *sizes: F8) -> bool:
        lo = self.rules.min_size
        for s in sizes:
            smallest = s.min()
            if not smallest <= s.max() <= top:  # also NaN
                return False
            if smallest < lo and not self._sizes_ok(s, top).all():  # zeros (or worse)
                return False
        return True

    def _ids_good(self, ids: I8, lowest: int) -> bool:
        return bool(ids.min() >= lowest and ids.max() <= self.rules.max_event_id)

    # ---- the named rules, in order (only run when some event failed) ----------------------

    def _time_rules(self, c: Cols, now_ns: int) -> list[Rule]:
        r = self.rules
        ts, recv = c["ts_event"], c["ts_recv"]
        low = r.min_event_time_ns
        high = _int64(now_ns + r.max_future_skew_ns)
        # ts clipped to >= low (> 0) first, so subtracting the allowance cannot wrap
        earliest_recv = np.maximum(ts, low) - r.max_recv_before_event_ns
        out: list[Rule] = [
            ("bad_timestamp", (ts <= 0) | (recv <= 0)),
            ("implausible_timestamp", (ts < low) | (recv < low)),
            ("future_timestamp", (ts > high) | (recv > high)),
        ]
        if r.max_age_ns > 0:
            out.append(("stale_timestamp", ts < _int64(now_ns - r.max_age_ns)))
        out.append(("recv_before_event", recv < earliest_recv))
        return out

    def _price_rules(self, *prices: F8) -> list[Rule]:
        lo, hi = self.rules.min_price, self.rules.max_price
        finite, positive, in_range = (np.zeros(prices[0].shape, dtype=bool) for _ in range(3))
        for p in prices:
            finite |= ~np.isfinite(p)
            positive |= p <= 0
            in_range |= (p < lo) | (p > hi)
        return [
            ("non_finite_price", finite),
            ("non_positive_price", positive),
            ("price_out_of_range", in_range),
        ]

    def _sizes_ok(self, s: F8, top: float) -> Mask:
        """0, or within [min_size, top]; -0.0 is negative (a sign is a claim)."""
        ok: Mask = ((s >= self.rules.min_size) & (s <= top)) | ((s == 0) & ~np.signbit(s))
        return ok

    def _size_rules(self, reason: str, top: float, *sizes: F8) -> list[Rule]:
        """Sizes, or a bar's volume (`reason` names its bound)."""
        lo = self.rules.min_size
        finite, negative, in_range = (np.zeros(sizes[0].shape, dtype=bool) for _ in range(3))
        for s in sizes:
            finite |= ~np.isfinite(s)
            negative |= np.signbit(s)
            in_range |= (s > top) | ((s > 0) & (s < lo))
        return [
            ("non_finite_size", finite),
            ("negative_size", negative),
            (reason, in_range),
        ]

    def _seq_bad(self, seq: I8) -> Mask:
        """A sequence number is absent (-1) or within [0, max_event_id]."""
        bad: Mask = (seq < -1) | (seq > self.rules.max_event_id)
        return bad

    def _trade_rules(self, c: Cols) -> list[Rule]:
        side, tid = c["side"], c["trade_id"]
        return [
            *self._price_rules(c["price"]),
            *self._size_rules("size_out_of_range", self.rules.max_size, c["size"]),
            ("bad_side", (side < -1) | (side > 1)),
            ("missing_trade_id", tid < 0),
            ("id_out_of_range", (tid > self.rules.max_event_id) | self._seq_bad(c["seq"])),
        ]

    def _quote_shape_bad(self, bp: F8, ap: F8) -> Mask:
        # ap / spread: a division by >= 1 cannot overflow where bp * spread could
        bad: Mask = (bp > ap) | (ap / self.rules.max_quote_spread > bp)
        return bad

    def _quote_rules(self, c: Cols) -> list[Rule]:
        bp, ap = c["bid_price"], c["ask_price"]
        return [
            *self._price_rules(bp, ap),
            *self._size_rules(
                "size_out_of_range", self.rules.max_size, c["bid_size"], c["ask_size"]
            ),
            ("crossed_quote", bp > ap),
            ("wide_quote", ap / self.rules.max_quote_spread > bp),
            ("id_out_of_range", self._seq_bad(c["seq"])),
        ]

    def _bar_shape_rules(self, c: Cols) -> list[Rule]:
        """The rules of a bar's shape, given prices and volume in range."""
        o, h, lo, cl = c["open"], c["high"], c["low"], c["close"]
        vwap, flags = c["vwap"], c["flags"]
        # NaN: absent (a null or omitted vwap); else within the bar's range, with slack
        vwap_ok = np.isnan(vwap) | (
            (vwap >= lo * (1 - VWAP_SLACK)) & (vwap / (1 + VWAP_SLACK) <= h)
        )
        return [
            ("bad_bar", (lo > np.minimum(o, cl)) | (h < np.maximum(o, cl))),
            ("wide_bar", h / self.rules.max_bar_range > lo),  # a division: cannot overflow
            ("bad_vwap", ~vwap_ok),
            ("bad_flags", (flags & ~_FLAGS) != 0),
        ]

    def _bar_rules(self, c: Cols) -> list[Rule]:
        trades = c["trades"]
        shape = dict(self._bar_shape_rules(c))
        return [
            *self._price_rules(c["open"], c["high"], c["low"], c["close"]),
            ("bad_bar", shape["bad_bar"]),
            ("wide_bar", shape["wide_bar"]),
            *self._size_rules("volume_out_of_range", self.rules.max_volume, c["volume"]),
            ("bad_trade_count", (trades < 0) | (trades > self.rules.max_event_id)),
            ("bad_vwap", shape["bad_vwap"]),
            ("bad_flags", shape["bad_flags"]),
        ]

    def _duplicates(self, batch: MarketEventBatch, reasons: list[str | None], source: int) -> None:
        """Flag repeated trade ids among the events no earlier rule rejected (kernels.dedup);
        rejected events are neither checked nor remembered."""
        seen = self._seen.get(batch.key)
        if seen is None:
            seen = self._seen[batch.key] = SeenIds(self.rules.dedup_window)
        at = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.intp)
        for i in at[seen.check(batch.cols["trade_id"][at], source)].tolist():
            reasons[i] = "duplicate_trade_id"
