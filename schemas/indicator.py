"""`IndicatorRecord`: the indicator values of one closed bar, as published on md.indicators.v1.

Public format (JSON, UTF-8, one Kafka record per instrument, timeframe and bar, key
``venue:symbol``)::

    {"v": 1, "venue": "binance", "symbol": "BTC-USDT", "timeframe": "5m",
     "ts": 1700000100000000000, "flags": 0, "ts_emit": 1700000401234567890,
     "sma_20": 37012.5, "sma_50": null, "ema_9": 37020.1, "ema_21": 37001.7,
     "rsi": 55.2, "macd": null, "macd_signal": null, "macd_hist": null,
     "bb_upper": 37110.3, "bb_middle": 37012.5, "bb_lower": 36914.7, "atr": 41.0,
     "vwap": 37005.9, "trend": 1.0, "vol_pct": null, "vol_regime": null}

``ts`` is the bar's open time (int64 ns since the epoch, UTC); (venue, symbol, timeframe,
ts) names the record, so a redelivery carries the same name and replaces it downstream.
``flags`` are the bar's flags (1 gap inside, 2 corrected after close). Every name in
`INDICATORS` is present: a number, or null while the indicator is warming up (TA-Lib
lookbacks, see `kernels.indicators`). ``trend`` and ``vol_regime`` are −1.0/0.0/+1.0.
``ts_emit`` is when the indicators agent produced the record. Unknown versions are rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import orjson

from schemas.envelope import floats, integers, load_envelope, strings

INDICATOR_VERSION: Final = 1
# The outputs of kernels.indicators.IndicatorState with its default IndicatorConfig, in
# its order; also the columns of the `indicators` table (schemas/sql/indicators.sql).
INDICATORS: Final = (
    "sma_20",
    "sma_50",
    "ema_9",
    "ema_21",
    "rsi",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "atr",
    "vwap",
    "trend",
    "vol_pct",
    "vol_regime",
)
_STRS: Final = ("venue", "symbol", "timeframe")
_INTS: Final = ("ts", "flags", "ts_emit")


@dataclass(frozen=True, slots=True)
class IndicatorRecord:
    venue: str
    symbol: str
    timeframe: str
    ts: int
    flags: int
    values: dict[str, float | None]  # every name of INDICATORS; None before warm-up
    ts_emit: int

    @property
    def key(self) -> str:
        """Kafka key: the instrument, like every other md.* record."""
        return f"{self.venue}:{self.symbol}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": INDICATOR_VERSION,
            "venue": self.venue,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "ts": self.ts,
            "flags": self.flags,
            "ts_emit": self.ts_emit,
            **{name: self.values.get(name) for name in INDICATORS},
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())


def value_or_none(x: float) -> float | None:
    """NaN (warm-up) is null on the wire and NULL in storage, never a number."""
    return None if math.isnan(x) else float(x)


def decode_indicator(data: bytes) -> IndicatorRecord:
    """Parse one md.indicators.v1 record; raises `CodecError` (with a dead-letter reason)."""
    doc = load_envelope(data, INDICATOR_VERSION)
    fields: dict[str, Any] = {**strings(doc, _STRS), **integers(doc, _INTS)}
    return IndicatorRecord(values=floats(doc, INDICATORS, nullable=True), **fields)
