"""OHLCV files and Binance kline dumps as bar events (the form; the reader is
`streams.sources.csvfile`).

- **OHLCV** with a header row ``ts,open,high,low,close,volume`` (optional ``trades``/``count``
  and ``vwap`` or ``quote_volume`` columns; ``time``, ``timestamp``, ``date``, ``datetime``,
  ``open_time`` are accepted for ``ts``); ``ts`` is the bar's open time.
- **Binance kline dump** without header (12 columns, open time first).

The timeframe is the (lower) median spacing of distinct bar times, which must equal one of
`TIMEFRAMES`, unless the caller names it. A row that does not parse keeps its place with
open/high/low/close NaN.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from schemas.events import NS_PER_S, TIMEFRAMES
from streams.sources.csvvalues import Columns, Fields, Mask

# field → the header names it is found by
BAR_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "ts": ("ts", "time", "timestamp", "date", "datetime", "open_time"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume",),
    "trades": ("trades", "count", "number_of_trades"),
    "vwap": ("vwap",),
    "quote_volume": ("quote_volume", "quote_asset_volume"),
}
BAR_REQUIRED: Final = ("ts", "open", "high", "low", "close", "volume")
# field → its position in a kline dump (no header)
BINANCE_KLINES: Final = {
    "ts": 0, "open": 1, "high": 2, "low": 3, "close": 4, "volume": 5, "quote_volume": 7,
    "trades": 8,
}  # fmt: skip
KLINE_FIELDS: Final = 12
# field → the NumPy type the fast path reads it as (times as text: epoch or ISO-8601)
BAR_TYPES: Final = {
    "ts": "U64", "open": "f8", "high": "f8", "low": "f8", "close": "f8", "volume": "f8",
    "trades": "i8", "vwap": "f8", "quote_volume": "f8",
}  # fmt: skip
BAR_COLUMNS: Final = (
    "ts_event", "open", "high", "low", "close", "volume", "trades", "vwap", "flags",
)  # fmt: skip
_PRICES: Final = ("open", "high", "low", "close")


def bar_columns(fields: Fields, wrong: Mask) -> tuple[Columns, Mask]:
    """A chunk's bar columns; a bad row's prices become NaN (validation rejects it)."""
    ts_event, bad = fields["ts"]
    bad = bad | wrong
    cols: Columns = {"ts_event": ts_event}
    for name in (*_PRICES, "volume"):
        cols[name], bad_col = fields[name]
        bad |= bad_col
    n = len(ts_event)
    if "trades" in fields:
        cols["trades"], bad_col = fields["trades"]
        bad |= bad_col
    else:
        cols["trades"] = np.zeros(n, dtype=np.int64)
    if "vwap" in fields:
        cols["vwap"], bad_col = fields["vwap"]
        bad |= bad_col
    elif "quote_volume" in fields:
        quote, bad_col = fields["quote_volume"]
        bad |= bad_col
        volume = cols["volume"]
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["vwap"] = np.where(volume > 0, quote / volume, math.nan)
    else:
        cols["vwap"] = np.full(n, math.nan)
    if bad.any():
        for name in _PRICES:
            cols[name] = cols[name].copy()
            cols[name][bad] = math.nan
    cols["flags"] = np.zeros(n, dtype=np.int64)
    return cols, bad


def infer_timeframe(ts_event: npt.NDArray[np.int64], path: Path) -> str:
    """The timeframe whose length equals the median spacing of distinct valid bar times."""
    distinct = np.unique(ts_event[ts_event > 0])
    if len(distinct) < 2:
        raise ValueError(
            f"{path}: fewer than two bars, cannot infer the timeframe; pass timeframe="
        )
    gaps = np.sort(np.diff(distinct))
    spacing = int(gaps[(len(gaps) - 1) // 2])  # lower median: missing bars only widen gaps
    for name, seconds in TIMEFRAMES.items():
        if spacing == seconds * NS_PER_S:
            return name
    raise ValueError(
        f"{path}: median bar spacing {spacing / NS_PER_S:g} s matches no timeframe "
        f"({', '.join(TIMEFRAMES)}); pass timeframe="
    )
