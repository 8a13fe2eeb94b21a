"""`MarketEventBatch`: the columnar wire envelope of the hot topics
(docs/ARCHITECTURE.md#market-event-batch).

Public format (JSON, UTF-8, one Kafka record, key ``venue:symbol``)::

    {"v": 1, "kind": "trade", "venue": "binance", "symbol": "BTC-USDT", "n": 2,
     "tf": null, "reason": null, "stamps": {"collector_out": 1700000000000000000},
     "cols": {"ts_event": [..], "ts_recv": [..], "price": [..], "size": [..],
              "side": [1, -1], "trade_id": [..], "seq": [null, null]}}

All events of a record share kind, venue and symbol. Times are int64 ns since the epoch
(UTC). ``side`` is the aggressor: 1 buy, -1 sell, 0 unknown. Column sets per kind are in
`COLUMNS`; optional columns may be omitted or hold nulls. Bars carry ``tf`` and their
``ts_event`` is the bar's open time; gap markers carry ``reason``.

Decoding never raises anything but `CodecError`, and every column it returns is a 1-D
array of exactly `n` values of the column's dtype (int64 or float64). A value of the wrong
type inside a column (a string, a boolean, a nested list or object, a float in an int
column, an integer outside int64, or one too large for a float; a null in a required
column) does not reject the whole record: it is flagged per event in
`MarketEventBatch.bad_type` (validation's reason `wrong_type`) so that exactly that event
is dead-lettered. What makes the events uncountable or the record unattributable rejects
the record with a `CodecError` reason: a column that is not a list of length `n`, a
missing required column, venue/symbol/tf/reason that are not short strings. Optional
columns may be omitted or hold nulls (absent). `tf` is kept for bars only and `reason` for
gap markers only; `stamps` keep only int64 integers.

Each distinct record is decoded once per process (`DecodeCache`): validate, bars, both
sinks, indicators and damping all read the same records, so a decoded batch is shared, and
its arrays are read-only. A caller that needs a modified column copies it first.
"""

from __future__ import annotations

import reprlib
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cached_property
from operator import countOf
from typing import Any, Final, TypeGuard

import numpy as np
import numpy.typing as npt
import orjson

from schemas.envelope import CodecError, as_float, brief, is_int64, load_envelope
from schemas.events import SCHEMA_VERSION, Kind

__all__ = [
    "COLUMNS",
    "DECODE_CACHE",
    "CodecError",
    "DecodeCache",
    "MarketEventBatch",
    "decode_batch",
]

I8: Final = np.dtype(np.int64)
F8: Final = np.dtype(np.float64)
# Longest venue, symbol, tf or gap reason a record may carry: validation's patterns allow
# far less; anything longer is not a name and would be copied into every dead letter.
MAX_NAME_CHARS: Final = 64
# Raw values nested deeper than orjson can write back are dead-lettered as a summary.
_RAW_REPR: Final = reprlib.Repr(maxlevel=4, maxlist=8, maxdict=8, maxstring=64, maxother=64)


@dataclass(frozen=True)
class ColumnSpec:
    dtype: np.dtype[Any]
    fill: float | int | None  # value for an omitted/null optional column; None = required


_TIMES = {"ts_event": ColumnSpec(I8, None), "ts_recv": ColumnSpec(I8, None)}
COLUMNS: Final[dict[Kind, dict[str, ColumnSpec]]] = {
    Kind.TRADE: {
        **_TIMES,
        "price": ColumnSpec(F8, None),
        "size": ColumnSpec(F8, None),
        "side": ColumnSpec(I8, 0),
        "trade_id": ColumnSpec(I8, -1),
        "seq": ColumnSpec(I8, -1),
    },
    Kind.QUOTE: {
        **_TIMES,
        "bid_price": ColumnSpec(F8, None),
        "bid_size": ColumnSpec(F8, None),
        "ask_price": ColumnSpec(F8, None),
        "ask_size": ColumnSpec(F8, None),
        "seq": ColumnSpec(I8, -1),
    },
    Kind.BAR: {
        **_TIMES,
        "open": ColumnSpec(F8, None),
        "high": ColumnSpec(F8, None),
        "low": ColumnSpec(F8, None),
        "close": ColumnSpec(F8, None),
        "volume": ColumnSpec(F8, None),
        "trades": ColumnSpec(I8, 0),
        "vwap": ColumnSpec(F8, float("nan")),
        "flags": ColumnSpec(I8, 0),
    },
    Kind.GAP: dict(_TIMES),
}

_KINDS: Final = {k.value: k for k in Kind}


@dataclass(eq=False)
class MarketEventBatch:
    kind: Kind
    venue: str
    symbol: str
    cols: dict[str, npt.NDArray[Any]]
    timeframe: str | None = None
    reason: str | None = None
    stamps: dict[str, int] = field(default_factory=dict)
    # Per-event mask of values that had the wrong JSON type (None when all were fine).
    bad_type: npt.NDArray[np.bool_] | None = None
    # The record decoded, kept so a rejected event is dead-lettered as it arrived.
    wire: bytes | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.cols["ts_event"])

    @property
    def key(self) -> str:
        return f"{self.venue}:{self.symbol}"

    def select(self, rows: npt.NDArray[Any]) -> MarketEventBatch:
        """A batch of the same instrument holding only `rows` (mask or index array)."""
        return MarketEventBatch(
            kind=self.kind,
            venue=self.venue,
            symbol=self.symbol,
            cols={name: col[rows] for name, col in self.cols.items()},
            timeframe=self.timeframe,
            reason=self.reason,
            stamps=dict(self.stamps),
        )

    @cached_property
    def raw(self) -> dict[str, Any] | None:
        """The JSON columns as they arrived; parsed again on demand, as only dead letters
        need them and a cached batch should not hold a Python object per value."""
        if self.wire is None:
            return None
        cols: dict[str, Any] = orjson.loads(self.wire)["cols"]
        return cols

    def raw_event(self, i: int) -> dict[str, Any]:
        """Event `i` as it arrived on the wire (for dead letters); always JSON-writable.

        Only columns that are lists of the record's length hold per-event values: other
        members of `cols` (unknown names, scalars) are left out, not copied into every
        dead letter. A value orjson cannot write back (nested too deep) becomes its summary.
        """
        raw = self.raw
        source: dict[str, Any] = raw if raw is not None else self.cols
        n = len(self)
        event: dict[str, Any] = {
            "kind": self.kind.value,
            "venue": self.venue,
            "symbol": self.symbol,
        }
        for name, col in source.items():
            if not isinstance(col, list | np.ndarray) or len(col) != n:
                continue
            value = col[i]
            if isinstance(value, np.generic):
                value = value.item()
            elif isinstance(value, list | dict):
                try:
                    orjson.dumps(value)
                except orjson.JSONEncodeError:
                    value = _RAW_REPR.repr(value)
            event[name] = value
        if self.timeframe is not None:
            event["tf"] = self.timeframe
        if self.reason is not None:
            event["reason"] = self.reason
        return event

    @classmethod
    def from_columns(
        cls,
        kind: Kind,
        venue: str,
        symbol: str,
        columns: dict[str, Any],
        *,
        timeframe: str | None = None,
        reason: str | None = None,
    ) -> MarketEventBatch:
        """Build a batch from array-likes, filling omitted optional columns."""
        n = len(columns["ts_event"])
        cols: dict[str, npt.NDArray[Any]] = {}
        for name, spec in COLUMNS[kind].items():
            if name in columns:
                cols[name] = np.asarray(columns[name], dtype=spec.dtype)
            elif spec.fill is not None:
                cols[name] = np.full(n, spec.fill, dtype=spec.dtype)
            else:
                raise KeyError(f"column {name!r} is required for {kind.value}")
        return cls(kind, venue, symbol, cols, timeframe=timeframe, reason=reason)

    def encode(self, **stamps: int) -> bytes:
        """Serialise; `stamps` (ns) are added so every hop's latency stays measurable."""
        doc = {
            "v": SCHEMA_VERSION,
            "kind": self.kind.value,
            "venue": self.venue,
            "symbol": self.symbol,
            "n": len(self),
            "tf": self.timeframe,
            "reason": self.reason,
            "stamps": {**self.stamps, **stamps},
            "cols": self.cols,
        }
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


class DecodeCache:
    """Decoded records keyed by their bytes, least recently used evicted first.

    Bounded by entries and by bytes (the record plus its arrays), so it never grows with
    the input. Faust hands each record to every agent's buffer (1024 deep), so a slow
    sink may read it up to ~1k records after the fastest agent did: the default size
    (`DECODE_CACHE`) covers about that for records of 512 trades. Hashing the key costs about
    1/30 of a decode (and once per bytes object, which Faust shares between the agents of
    one topic), and a hit compares bytes (memcmp). Only successful decodes are kept;
    a `CodecError` is raised again on every call. Each call gets its own batch object
    (fresh `cols` and `stamps` dicts) whose arrays are the shared, read-only ones.
    Safe re-entrantly (nothing is held across a decode); not meant for threads.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a decode cache needs room for at least one entry and byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0  # calls that decoded: misses, failures and records too big to keep
        self._entries: OrderedDict[bytes, tuple[MarketEventBatch, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def decode(self, data: bytes) -> MarketEventBatch:
        """`decode_batch`, through the cache."""
        if type(data) is not bytes:  # bytearray, memoryview: unhashable, decoded each time
            self.misses += 1
            return _copy(_decode(data))
        entry = self._entries.get(data)
        if entry is not None:
            self.hits += 1
            with suppress(KeyError):  # evicted by a re-entrant call meanwhile: still valid
                self._entries.move_to_end(data)
            return _copy(entry[0])
        self.misses += 1
        batch = _decode(data)
        cost = len(data) + sum(a.nbytes for a in batch.cols.values())
        if batch.bad_type is not None:
            cost += batch.bad_type.nbytes
        if cost <= self.max_bytes and data not in self._entries:
            self._entries[data] = (batch, cost)
            self.nbytes += cost
            while self._entries and (
                len(self._entries) > self.max_entries or self.nbytes > self.max_bytes
            ):
                _, (_, freed) = self._entries.popitem(last=False)
                self.nbytes -= freed
        return _copy(batch)


# A record of 512 trades costs ~66 KB with its arrays: ~1k of them fit in 64 MiB, the most
# this may hold of the worker's 300 MB memory goal (it no longer keeps each batch's JSON
# values, ~100 KB per such record, while a sink's take of up to 256 records is written).
DECODE_CACHE: Final = DecodeCache(max_entries=1024, max_bytes=64 * 1024 * 1024)


def decode_batch(data: bytes) -> MarketEventBatch:
    """Parse one wire record; raises `CodecError` with a dead-letter reason code.

    Decoded once per process (`DECODE_CACHE`): the batch's arrays are shared and read-only.
    """
    return DECODE_CACHE.decode(data)


def _copy(batch: MarketEventBatch) -> MarketEventBatch:
    """A batch of its own around the shared, read-only arrays."""
    return MarketEventBatch(
        kind=batch.kind,
        venue=batch.venue,
        symbol=batch.symbol,
        cols=dict(batch.cols),
        timeframe=batch.timeframe,
        reason=batch.reason,
        stamps=dict(batch.stamps),
        bad_type=batch.bad_type,
        wire=batch.wire,
    )


def _decode(data: bytes) -> MarketEventBatch:
    doc = load_envelope(data, SCHEMA_VERSION)
    kind_name = doc.get("kind")
    kind = _KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise CodecError("unknown_kind", f"kind={brief(kind_name)}")
    venue, symbol, n, raw = doc.get("venue"), doc.get("symbol"), doc.get("n"), doc.get("cols")
    if not _is_name(venue) or not _is_name(symbol):
        raise CodecError("malformed", f"venue and symbol must be strings of 1-{MAX_NAME_CHARS}")
    # Every event takes at least a byte: a larger n is a lie, not worth allocating for.
    if type(n) is not int or n < 1 or n > len(data):
        raise CodecError("malformed", f"n={brief(n)}")
    if not isinstance(raw, dict):
        raise CodecError("malformed", "cols must be an object")
    tf, reason, stamps = doc.get("tf"), doc.get("reason"), doc.get("stamps")
    if kind is Kind.BAR and not _is_name(tf):
        raise CodecError("malformed", "bar records need tf, a short string")
    if kind is Kind.GAP and reason is not None and not _is_name(reason):
        raise CodecError("malformed", "a gap's reason must be a short string")
    if stamps is None:
        stamps = {}
    elif not isinstance(stamps, dict):
        raise CodecError("malformed", "stamps must be an object")

    cols: dict[str, npt.NDArray[Any]] = {}
    bad = np.zeros(n, dtype=bool)
    for name, spec in COLUMNS[kind].items():
        values = raw.get(name)
        if values is None:
            if spec.fill is None:
                raise CodecError("malformed", f"missing column {name}")
            col = np.full(n, spec.fill, dtype=spec.dtype)
        elif type(values) is not list or len(values) != n:
            raise CodecError("malformed", f"column {name} is not a list of length {n}")
        else:
            col = _column(values, spec, bad)
        col.setflags(write=False)
        cols[name] = col
    has_bad = bool(bad.any())
    if has_bad:
        bad.setflags(write=False)
    return MarketEventBatch(
        kind=kind,
        venue=venue,
        symbol=symbol,
        cols=cols,
        timeframe=tf if kind is Kind.BAR else None,
        reason=reason if kind is Kind.GAP else None,
        stamps={k: v for k, v in stamps.items() if is_int64(v)},
        bad_type=bad if has_bad else None,
        wire=data,
    )


def _is_name(value: object) -> TypeGuard[str]:
    return type(value) is str and 0 < len(value) <= MAX_NAME_CHARS


def _column(values: list[Any], spec: ColumnSpec, bad: npt.NDArray[np.bool_]) -> npt.NDArray[Any]:
    """Vectorised conversion of a list of length n to a 1-D array of n values of the
    column's dtype, with a per-element slow path only when types are mixed.

    The fast paths take exact types only: `type(v) is int` excludes booleans (which
    `np.asarray` would turn into 0/1), and neither accepts a nested list (which would make
    a 2-D array) or a string (which `np.fromiter` would parse).
    """
    n = len(values)
    if spec.dtype.kind == "i":
        # fromiter is ~2x faster than asarray's type inference, and raises OverflowError
        # outside int64 where asarray's uint64 would wrap around.
        if countOf(map(type, values), int) == n:
            try:
                return np.fromiter(values, I8, count=n)
            except OverflowError:
                pass
    else:
        floats = countOf(map(type, values), float)
        if floats == n:  # JSON numbers with a fraction or exponent: the usual case
            return np.fromiter(values, F8, count=n)
        if floats + countOf(map(type, values), int) == n:  # integral prices written as ints
            try:
                return np.fromiter(values, F8, count=n)
            except OverflowError:  # an integer beyond float range: the slow path flags it
                pass
    if spec.fill is not None and values.count(None) == n:
        return np.full(n, spec.fill, dtype=spec.dtype)  # an optional column sent as nulls
    return _column_slow(values, spec, bad)


def _column_slow(
    values: list[Any], spec: ColumnSpec, bad: npt.NDArray[np.bool_]
) -> npt.NDArray[Any]:
    is_float = spec.dtype.kind == "f"
    out = np.empty(len(values), dtype=spec.dtype)
    fallback = spec.fill if spec.fill is not None else (float("nan") if is_float else 0)
    for i, value in enumerate(values):
        number: float | int | None = as_float(value) if is_float else None
        if not is_float and is_int64(value):
            number = value
        if number is not None:
            out[i] = number
        else:
            out[i] = fallback
            # null in an optional column is the documented "absent"; anything else is bad
            if not (value is None and spec.fill is not None):
                bad[i] = True
    return out
