"""The vocabulary of a market event — a trade, quote, bar or gap marker — and its names
(docs/ARCHITECTURE.md#events).

Events travel in columnar `MarketEventBatch` records (`schemas.batch`), never one per Kafka
record: Faust's cost is per record (docs/ARCHITECTURE.md#why-micro-batches).
"""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum
from typing import Final

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
