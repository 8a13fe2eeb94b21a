"""`MarketEventBatch`: the columnar wire envelope of the hot topics (DESIGN §2).

Public format (JSON, UTF-8, one Kafka record, key ``venue:symbol``)::

    {"v": 1, "kind": "trade", "venue": "binance", "symbol": "BTC-USDT", "n": 2,
     "tf": null, "reason": null, "stamps": {"collector_out": 1700000000000000000},
     "cols": {"ts_event": [..], "ts_recv": [..], "price": [..], "size": [..],
              "side": [1, -1], "trade_id": [..], "seq": [null, null]}}

All events of a record share kind, venue and symbol. Times are int64 ns since the epoch
(UTC). ``side`` is the aggressor: 1 buy, -1 sell, 0 unknown. Column sets per kind are in
`COLUMNS`; optional columns may be omitted or hold nulls. Bars carry ``tf`` and their
``ts_event`` is the bar's open time; gap markers carry ``reason``.

Decoding never raises anything but `CodecError`: a value of the wrong type inside a column
does not reject the whole record, it is flagged per event in `MarketEventBatch.bad_type`
so that validation can dead-letter exactly that event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from schemas.envelope import CodecError, load_envelope
from schemas.events import SCHEMA_VERSION, Kind, MarketEvent

__all__ = ["COLUMNS", "CodecError", "MarketEventBatch", "decode_batch"]

I8: Final = np.dtype(np.int64)
F8: Final = np.dtype(np.float64)


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
    # The decoded JSON columns, kept so a rejected event is dead-lettered as it arrived.
    raw: dict[str, list[Any]] | None = field(default=None, repr=False)

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

    def raw_event(self, i: int) -> dict[str, Any]:
        """Event `i` as it arrived on the wire (for dead letters)."""
        source: dict[str, Any] = self.raw if self.raw is not None else self.cols
        event: dict[str, Any] = {
            "kind": self.kind.value,
            "venue": self.venue,
            "symbol": self.symbol,
        }
        for name, col in source.items():
            value = col[i]
            event[name] = value.item() if isinstance(value, np.generic) else value
        if self.timeframe is not None:
            event["tf"] = self.timeframe
        return event

    def events(self) -> list[MarketEvent]:
        """The logical records, for tools and tests (the hot path stays columnar)."""
        out = []
        for i in range(len(self)):
            fields = {name: col[i].item() for name, col in self.cols.items()}
            if "trade_id" in fields and fields["trade_id"] < 0:
                fields["trade_id"] = None
            if "seq" in fields and fields["seq"] < 0:
                fields["seq"] = None
            out.append(
                MarketEvent(
                    kind=self.kind.value,
                    venue=self.venue,
                    symbol=self.symbol,
                    timeframe=self.timeframe,
                    reason=self.reason,
                    **fields,
                )
            )
        return out

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


def decode_batch(data: bytes) -> MarketEventBatch:
    """Parse one wire record; raises `CodecError` with a dead-letter reason code."""
    doc = load_envelope(data, SCHEMA_VERSION)
    kind = _KINDS.get(doc.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        raise CodecError("unknown_kind", f"kind={doc.get('kind')!r}")
    venue, symbol, n, raw = doc.get("venue"), doc.get("symbol"), doc.get("n"), doc.get("cols")
    if not isinstance(venue, str) or not isinstance(symbol, str):
        raise CodecError("malformed", "venue and symbol must be strings")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise CodecError("malformed", f"n={n!r}")
    if not isinstance(raw, dict):
        raise CodecError("malformed", "cols must be an object")
    tf, reason, stamps = doc.get("tf"), doc.get("reason"), doc.get("stamps") or {}
    if kind is Kind.BAR and not isinstance(tf, str):
        raise CodecError("malformed", "bar records need tf")
    if not isinstance(stamps, dict):
        raise CodecError("malformed", "stamps must be an object")

    cols: dict[str, npt.NDArray[Any]] = {}
    bad = np.zeros(n, dtype=bool)
    for name, spec in COLUMNS[kind].items():
        values = raw.get(name)
        if values is None:
            if spec.fill is None:
                raise CodecError("malformed", f"missing column {name}")
            cols[name] = np.full(n, spec.fill, dtype=spec.dtype)
            continue
        if not isinstance(values, list) or len(values) != n:
            raise CodecError("malformed", f"column {name} is not a list of length {n}")
        cols[name] = _column(values, spec, bad)
    return MarketEventBatch(
        kind=kind,
        venue=venue,
        symbol=symbol,
        cols=cols,
        timeframe=tf if isinstance(tf, str) else None,
        reason=reason if isinstance(reason, str) else None,
        stamps={k: v for k, v in stamps.items() if isinstance(v, int)},
        bad_type=bad if bad.any() else None,
        raw=raw,
    )


def _column(values: list[Any], spec: ColumnSpec, bad: npt.NDArray[np.bool_]) -> npt.NDArray[Any]:
    """Vectorised conversion with a per-element slow path only when types are mixed."""
    arr = np.asarray(values)
    kind = arr.dtype.kind
    if spec.dtype.kind == "f" and kind in "if":
        return arr.astype(np.float64, copy=False)
    if spec.dtype.kind == "i" and kind in "iu":
        return arr.astype(np.int64, copy=False)
    return _column_slow(values, spec, bad)


def _column_slow(
    values: list[Any], spec: ColumnSpec, bad: npt.NDArray[np.bool_]
) -> npt.NDArray[Any]:
    is_float = spec.dtype.kind == "f"
    out = np.empty(len(values), dtype=spec.dtype)
    fallback = spec.fill if spec.fill is not None else (float("nan") if is_float else 0)
    for i, value in enumerate(values):
        if isinstance(value, bool):
            ok = False
        elif is_float:
            ok = isinstance(value, int | float)
        else:
            ok = isinstance(value, int) and -(2**63) <= value < 2**63
        if ok:
            out[i] = value
        else:
            out[i] = fallback
            # null in an optional column is the documented "absent"; anything else is bad
            if not (value is None and spec.fill is not None):
                bad[i] = True
    return out
