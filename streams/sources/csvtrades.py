"""Binance trade dumps as trade events (the form; the reader is `streams.sources.csvfile`).

``id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match]``, with or without a header
row. ``is_buyer_maker`` true means the maker bought, so the aggressor sold: side -1, else
+1. ``trade_id`` = ``id``. With a header, columns are found by name
(``agg_trade_id``/``quantity``/``transact_time`` of aggTrades dumps also work). A row that
does not parse keeps its place with its price NaN, its id -1 and its side 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import repeat
from typing import Final

import numpy as np
import numpy.typing as npt

from streams.sources.csvvalues import Columns, Fields, Mask

_SIDES: Final[dict[str, int]] = {"True": -1, "False": 1, "true": -1, "false": 1}
_SIDES_LOOSE: Final[dict[str, int]] = {"true": -1, "t": -1, "1": -1, "false": 1, "f": 1, "0": 1}

# field → the header names it is found by
TRADE_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "id": ("id", "trade_id", "agg_trade_id"),
    "price": ("price",),
    "qty": ("qty", "quantity", "size", "amount"),
    "time": ("time", "transact_time", "timestamp", "ts"),
    "is_buyer_maker": ("is_buyer_maker",),
}
# field → its position in a dump without a header
BINANCE_TRADES: Final = {"id": 0, "price": 1, "qty": 2, "time": 4, "is_buyer_maker": 5}
# field → the NumPy type the fast path reads it as
TRADE_TYPES: Final = {"id": "i8", "price": "f8", "qty": "f8", "time": "i8", "is_buyer_maker": "U8"}
TRADE_COLUMNS: Final = ("ts_event", "price", "size", "side", "trade_id", "seq")


def is_side(cell: str) -> bool:
    """Whether `cell` reads as an ``is_buyer_maker`` flag (the 6th field of a dump)."""
    return cell in _SIDES or cell.lower() in _SIDES_LOOSE


def sides(texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], Mask]:
    """is_buyer_maker → aggressor side: true (maker bought) = -1 sell, false = +1 buy."""
    side = np.fromiter(map(_SIDES.get, texts, repeat(0)), dtype=np.int64, count=len(texts))
    bad = side == 0
    for i in np.flatnonzero(bad).tolist():
        loose = _SIDES_LOOSE.get(texts[i].strip().lower(), 0)
        side[i] = loose
        bad[i] = loose == 0
    return side, bad


def trade_columns(fields: Fields, wrong: Mask) -> tuple[Columns, Mask]:
    """A chunk's trade columns; a bad row's price becomes NaN (validation rejects it)."""
    trade_id, bad_id = fields["id"]
    price, bad_price = fields["price"]
    size, bad_size = fields["qty"]
    ts_event, bad_ts = fields["time"]
    side, bad_side = fields["is_buyer_maker"]
    bad = wrong | bad_id | bad_price | bad_size | bad_ts | bad_side
    if bad.any():
        price = price.copy()
        price[bad] = math.nan
    cols: Columns = {
        "ts_event": ts_event,
        "price": price,
        "size": size,
        "side": side,
        "trade_id": trade_id,
        "seq": np.full(len(price), -1, dtype=np.int64),
    }
    return cols, bad
