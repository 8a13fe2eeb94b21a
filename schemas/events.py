"""The logical record: one trade, quote, bar or gap marker (DESIGN §3).

`MarketEvent` is what a person reasons about; on the wire, events travel in columnar
`MarketEventBatch` envelopes (see `schemas.batch`) because Faust's cost is per Kafka record.
"""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum
from typing import Final

import faust

SCHEMA_VERSION: Final = 1

# Whole-string patterns (\A…\Z: `$` would also match before a trailing newline, so
# "BTC-USDT\n" passed `.match`); validation uses `fullmatch` on top of that.
SYMBOL_RE: Final = re.compile(r"\A[A-Z0-9]{1,16}-[A-Z0-9]{1,16}\Z")
VENUE_RE: Final = re.compile(r"\A[a-z][a-z0-9_]{0,31}\Z")
MAX_SYMBOL_CHARS: Final = 33  # the longest SYMBOL_RE allows
MAX_VENUE_CHARS: Final = 32  # the longest VENUE_RE allows
# Why a collector wrote a gap marker (streams/venues/base.py); validation rejects others.
GAP_REASONS: Final = frozenset({"reconnect", "resubscribe", "sequence_gap", "unsubscribed"})

TIMEFRAMES: Final[dict[str, int]] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "1h": 3600,
    "1d": 86400,
}
NS_PER_S: Final = 1_000_000_000


class Kind(StrEnum):
    TRADE = "trade"
    QUOTE = "quote"
    BAR = "bar"
    GAP = "gap"


class Side(IntEnum):
    """Aggressor (taker) side; collectors convert each venue's convention to this."""

    SELL = -1
    UNKNOWN = 0
    BUY = 1


class BarFlag(IntEnum):
    """Bit flags on a bar: downstream must know when a bar is not the whole story."""

    GAP = 1  # a gap marker fell inside the bar: data may be missing
    CORRECTED = 2  # re-emitted after close because a late tick arrived


def instrument_key(venue: str, symbol: str) -> str:
    """Kafka key of every hot-topic record: one instrument stays on one partition."""
    return f"{venue}:{symbol}"


class MarketEvent(faust.Record, serializer="json", include_metadata=False):
    """One logical market event. Fields not relevant to a kind stay None."""

    kind: str
    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    price: float | None = None
    size: float | None = None
    side: int = Side.UNKNOWN
    trade_id: int | None = None
    seq: int | None = None
    bid_price: float | None = None
    bid_size: float | None = None
    ask_price: float | None = None
    ask_size: float | None = None
    timeframe: str | None = None
    open: float | None = None
    high: float | None = None
    low: float | None = None
    close: float | None = None
    volume: float | None = None
    trades: int | None = None
    vwap: float | None = None
    flags: int = 0
    reason: str | None = None
