"""File source: replay trades or OHLCV bars from a CSV file (`sepstream demo --source csv:PATH`).

Why: backtests and demos on real history without a venue connection. The form is detected
from the first row:

- **Binance trade dump** ``id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match]``, with
  or without a header row → trade events. ``is_buyer_maker`` true means the maker bought, so
  the aggressor sold: side -1, else +1. ``trade_id`` = ``id``. With a header, columns are
  found by name (``agg_trade_id``/``quantity``/``transact_time`` of aggTrades dumps also work).
- **OHLCV** with a header row ``ts,open,high,low,close,volume`` (optional ``trades``/``count``
  and ``vwap`` or ``quote_volume`` columns; ``time``, ``timestamp``, ``date``, ``datetime``,
  ``open_time`` are accepted for ``ts``) → bar events; ``ts`` is the bar's open time.
- **Binance kline dump** without header (12 columns, open time first) → bar events.

Files may be plain, gzip (``.gz``) or a zip holding one CSV (``.zip``, as Binance publishes).

Times become int64 ns since the epoch, UTC. ISO-8601 values may carry a zone; naive ones are
UTC; fractions beyond µs are truncated. Epoch numbers are read by magnitude (absolute value):
below 1e11 seconds (so ms before 1973-03-03 would be misread as s), below 1e14 milliseconds,
below 1e17 microseconds, else nanoseconds; a time beyond int64 ns (after 2262) is a bad row.
This is decided per value, so a file that concatenates older ms dumps with newer µs ones
reads correctly. Bars' timeframe is the
(lower) median spacing of distinct bar times, which must equal one of `TIMEFRAMES`, unless
`timeframe=` is given.

Bad rows are never silently dropped: a row with a field that does not parse (or the wrong
number of fields) is kept with its price (bars: open/high/low/close) set to NaN, a time that
does not parse becomes 0 (such rows sort first), an id -1, a side 0, so validation
dead-letters the row (a NaN travels as JSON null, which validation reports as ``wrong_type``).
`CsvData.bad_rows` counts them and `bad_lines` names the first lines; a warning is logged.
Literal ``nan``/``inf`` parse as numbers and are left to validation without being counted.

``ts_recv`` is the wall-clock time of the read, the same for every row.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import io
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from schemas.events import NS_PER_S, SYMBOL_RE, TIMEFRAMES, VENUE_RE, Kind
from streams.sources.synthetic import EventSink

log = structlog.get_logger(__name__)

QUOTE_ASSETS: Final = (
    "USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD", "EUR", "GBP", "JPY", "TRY", "BTC", "ETH", "BNB",
)  # fmt: skip
_QUOTES_LONGEST_FIRST: Final = tuple(sorted(QUOTE_ASSETS, key=len, reverse=True))
# Epoch magnitude thresholds (absolute value) → ns multiplier; see the module docstring.
SECONDS_BELOW: Final = 10**11
MILLIS_BELOW: Final = 10**14
MICROS_BELOW: Final = 10**17
_INT64_MAX: Final = 2**63 - 1
_CHUNK_BYTES: Final = 1 << 24  # characters of lines converted at a time
_PRODUCE_ROWS: Final = 65_536  # rows per producer.add() when replaying
_BAD_LINES_KEPT: Final = 100
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SIDES: Final[dict[str, int]] = {"True": -1, "False": 1, "true": -1, "false": 1}
_SIDES_LOOSE: Final[dict[str, int]] = {"true": -1, "t": -1, "1": -1, "false": 1, "f": 1, "0": 1}

_TRADE_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "id": ("id", "trade_id", "agg_trade_id"),
    "price": ("price",),
    "qty": ("qty", "quantity", "size", "amount"),
    "time": ("time", "transact_time", "timestamp", "ts"),
    "is_buyer_maker": ("is_buyer_maker",),
}
_BAR_NAMES: Final[dict[str, tuple[str, ...]]] = {
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
_BAR_REQUIRED: Final = ("ts", "open", "high", "low", "close", "volume")
_FAST_TYPES: Final[dict[str, str]] = {
    "id": "i8", "price": "f8", "qty": "f8", "time": "i8", "is_buyer_maker": "U8", "ts": "U64",
    "open": "f8", "high": "f8", "low": "f8", "close": "f8", "volume": "f8", "trades": "i8",
    "vwap": "f8", "quote_volume": "f8",
}  # fmt: skip
_BINANCE_TRADES: Final = {"id": 0, "price": 1, "qty": 2, "time": 4, "is_buyer_maker": 5}
_BINANCE_KLINES: Final = {
    "ts": 0, "open": 1, "high": 2, "low": 3, "close": 4, "volume": 5, "quote_volume": 7,
    "trades": 8,
}  # fmt: skip

Columns = dict[str, npt.NDArray[Any]]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class CsvData:
    """A parsed file: one instrument's events as columns sorted by `ts_event`."""

    kind: Kind
    venue: str
    symbol: str
    timeframe: str | None
    columns: Columns
    bad_rows: int = 0
    bad_lines: tuple[int, ...] = field(default=())  # 1-based line numbers, the first 100

    def __len__(self) -> int:
        return len(self.columns["ts_event"])


def read_csv(
    path: str | os.PathLike[str],
    *,
    venue: str = "file",
    symbol: str | None = None,
    timeframe: str | None = None,
) -> CsvData:
    """Parse a trade dump or OHLCV file; see the module docstring for forms and rules.

    `symbol` defaults to one inferred from a Binance-style file name; `timeframe` (bars
    only, ignored for trades) overrides the inferred one. Raises `ValueError` with a
    readable message for an unknown form, symbol or timeframe.
    """
    path = Path(path)
    if not VENUE_RE.match(venue):
        raise ValueError(f"venue {venue!r} must be lower case [a-z][a-z0-9_]*")
    if timeframe is not None and timeframe not in TIMEFRAMES:
        raise ValueError(f"timeframe {timeframe!r} is not one of {', '.join(TIMEFRAMES)}")
    sym = _resolve_symbol(symbol, path)
    recv_ns = time.time_ns()
    with contextlib.ExitStack() as stack:
        stream = _open_text(path, stack)
        first, first_line = _first_line(stream)
        if first is None:
            raise ValueError(f"{path}: empty file")
        cells = next(csv.reader([first]))
        kind, index, header = _detect(cells, path)
        assemble = _trade_columns if kind is Kind.TRADE else _bar_columns
        parts: list[Columns] = []
        bad_parts: list[Mask] = []
        lines: list[int] = []
        line_no = first_line + 1 if header else first_line  # line of the chunk's first line
        for chunk in _chunks(stream, [] if header else [first]):
            cols, bad, rows_at = _parse_chunk(chunk, len(cells), index, assemble)
            parts.append(cols)
            bad_parts.append(bad)
            if bad.any() and len(lines) < _BAD_LINES_KEPT:
                at = rows_at[bad][: _BAD_LINES_KEPT - len(lines)] + line_no
                lines.extend(at.tolist())
            line_no += len(chunk)

    columns = _concat(parts, kind)
    bad_all = np.concatenate(bad_parts) if bad_parts else np.zeros(0, dtype=bool)
    n = len(columns["ts_event"])
    recv = np.full(n, recv_ns, dtype=np.int64)
    columns = {"ts_event": columns.pop("ts_event"), "ts_recv": recv, **columns}
    if n and np.any(np.diff(columns["ts_event"]) < 0):
        order = np.argsort(columns["ts_event"], kind="stable")
        columns = {name: col[order] for name, col in columns.items()}
    tf = None
    if kind is Kind.BAR:
        tf = timeframe or _infer_timeframe(columns["ts_event"], path)
    data = CsvData(kind, venue, sym, tf, columns, int(bad_all.sum()), tuple(lines))
    log.info(
        "csv read",
        path=str(path),
        kind=kind.value,
        venue=venue,
        symbol=sym,
        timeframe=tf,
        rows=n,
        bad_rows=data.bad_rows,
    )
    if data.bad_rows:
        log.warning(
            "csv rows did not parse; kept with NaN prices so validation dead-letters them",
            path=str(path),
            bad_rows=data.bad_rows,
            first_bad_lines=list(data.bad_lines[:10]),
        )
    return data


async def produce(
    producer: EventSink,
    path: str | os.PathLike[str],
    *,
    venue: str = "file",
    symbol: str | None = None,
    timeframe: str | None = None,
) -> int:
    """Read `path` and hand every row to `producer` in time order; returns the count."""
    data = await asyncio.to_thread(read_csv, path, venue=venue, symbol=symbol, timeframe=timeframe)
    n = len(data)
    for a in range(0, n, _PRODUCE_ROWS):
        part = {name: col[a : a + _PRODUCE_ROWS] for name, col in data.columns.items()}
        await producer.add(data.kind, data.venue, data.symbol, part, timeframe=data.timeframe)
        await asyncio.sleep(0)  # let the producer's linger task and the Kafka client run
    return n


# ---- symbols ----------------------------------------------------------------------------


def split_pair(token: str) -> str | None:
    """``BTCUSDT`` → ``BTC-USDT`` by the longest known quote-asset suffix, else None."""
    token = token.upper()
    if not token.isalnum():
        return None
    for quote in _QUOTES_LONGEST_FIRST:
        if token.endswith(quote) and len(token) > len(quote):
            symbol = f"{token[: -len(quote)]}-{quote}"
            return symbol if SYMBOL_RE.match(symbol) else None
    return None


def symbol_from_filename(path: str | os.PathLike[str]) -> str | None:
    """``BTCUSDT-trades-2024-01-01.csv`` → ``BTC-USDT``; ``ETH-USDT-1m.csv`` → ``ETH-USDT``."""
    tokens = re.split(r"[-_.]", Path(path).name)
    if len(tokens) >= 2 and tokens[1].upper() in QUOTE_ASSETS:
        dashed = f"{tokens[0].upper()}-{tokens[1].upper()}"
        if SYMBOL_RE.match(dashed):
            return dashed
    return split_pair(tokens[0])


def _resolve_symbol(symbol: str | None, path: Path) -> str:
    if symbol is not None:
        sym = symbol.strip().upper()
        if SYMBOL_RE.match(sym):
            return sym
        pair = split_pair(sym)
        if pair is None:
            raise ValueError(f"symbol {symbol!r} is not BASE-QUOTE (e.g. BTC-USDT)")
        return pair
    inferred = symbol_from_filename(path)
    if inferred is None:
        raise ValueError(
            f"cannot infer the symbol from the file name {path.name!r} (expected e.g. "
            f"BTCUSDT-trades-2024-01-01.csv, quote one of {', '.join(QUOTE_ASSETS)}); "
            "pass symbol="
        )
    return inferred


# ---- reading ----------------------------------------------------------------------------


def _open_text(path: Path, stack: contextlib.ExitStack) -> IO[str]:
    """A text stream of the CSV, unwrapping .gz and single-member .zip files."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return stack.enter_context(gzip.open(path, "rt", encoding="utf-8-sig"))
    if name.endswith(".zip"):
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if len(members) != 1:
            raise ValueError(f"{path}: a zip must hold exactly one CSV, found {len(members)}")
        raw = stack.enter_context(archive.open(members[0]))
        return stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8-sig"))
    return stack.enter_context(path.open(encoding="utf-8-sig"))


def _first_line(stream: IO[str]) -> tuple[str | None, int]:
    """The first non-blank line and its 1-based line number."""
    number = 0
    while line := stream.readline():
        number += 1
        if line.strip():
            return line, number
    return None, number


def _chunks(stream: IO[str], pending: list[str]) -> Iterator[list[str]]:
    """Lines in chunks of about `_CHUNK_BYTES` characters: bounds memory for huge files."""
    chunk = pending + stream.readlines(_CHUNK_BYTES)
    while chunk:
        yield chunk
        chunk = stream.readlines(_CHUNK_BYTES)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _detect(first: list[str], path: Path) -> tuple[Kind, dict[str, int], bool]:
    """(kind, column index by field name, whether the first row is a header)."""
    cells = [c.strip() for c in first]
    if _is_number(cells[0]):
        if len(cells) in (6, 7):
            if cells[5] not in _SIDES and cells[5].lower() not in _SIDES_LOOSE:
                raise ValueError(
                    f"{path}: a file without a header must be a Binance trade dump "
                    "(id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match]); its 6th "
                    f"field is {cells[5]!r}, not true/false. OHLCV files need the header "
                    "row ts,open,high,low,close,volume"
                )
            return Kind.TRADE, dict(_BINANCE_TRADES), False
        if len(cells) == 12:
            return Kind.BAR, dict(_BINANCE_KLINES), False
        raise ValueError(
            f"{path}: {len(cells)} fields and no header: not a Binance trade (6-7 fields) or "
            "kline (12 fields) dump; OHLCV files need the header ts,open,high,low,close,volume"
        )
    names = [c.lower() for c in cells]
    bars = _find_columns(names, _BAR_NAMES)
    if all(k in bars for k in _BAR_REQUIRED):
        return Kind.BAR, bars, True
    trades = _find_columns(names, _TRADE_NAMES)
    if len(trades) == len(_TRADE_NAMES):
        return Kind.TRADE, trades, True
    raise ValueError(
        f"{path}: header {','.join(cells)!r} is neither OHLCV (ts,open,high,low,close,volume) "
        "nor a Binance trade dump (id,price,qty,quote_qty,time,is_buyer_maker)"
    )


def _find_columns(names: list[str], aliases: dict[str, tuple[str, ...]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for key, options in aliases.items():
        for option in options:
            if option in names:
                found[key] = names.index(option)
                break
    return found


Fields = dict[str, tuple[npt.NDArray[Any], Mask]]  # field → (values, unparseable)
Assemble = Callable[[Fields, Mask], tuple[Columns, Mask]]


def _parse_chunk(
    lines: list[str], width: int, index: dict[str, int], assemble: Assemble
) -> tuple[Columns, Mask, npt.NDArray[np.intp]]:
    """Columns of one chunk, its bad-row mask and each row's line offset in the chunk.

    Fast path: numpy's C `loadtxt` (about ten times faster than the csv module). Any
    irregularity (a field that does not parse, a wrong field count, a bad flag) sends the
    chunk through the csv module, which finds and keeps each bad row.
    """
    if any(line.strip() for line in lines):
        try:
            fields = _fast_fields(lines, width, index)
        except ValueError:
            pass
        else:
            n = len(next(iter(fields.values()))[0])
            cols, bad = assemble(fields, np.zeros(n, dtype=bool))
            if not bad.any():
                return cols, bad, np.zeros(0, dtype=np.intp)
    rows = list(csv.reader(lines))
    kept = [i for i, row in enumerate(rows) if any(cell.strip() for cell in row)]
    texts, wrong = _transpose([rows[i] for i in kept], width, index)
    cols, bad = assemble(_slow_fields(texts), wrong)
    return cols, bad, np.asarray(kept, dtype=np.intp)


def _fast_fields(lines: list[str], width: int, index: dict[str, int]) -> Fields:
    names = {i: name for name, i in index.items()}
    dtype = [(names.get(j, f"_{j}"), _FAST_TYPES.get(names.get(j, ""), "U1")) for j in range(width)]
    arr = np.loadtxt(lines, delimiter=",", dtype=dtype, comments=None, quotechar='"', ndmin=1)
    fields: Fields = {}
    for name in index:
        values = arr[name]
        if name == "time":
            fields[name] = _epoch_ns(values)
        elif name == "ts":
            fields[name] = _times(values.tolist())
        elif name == "is_buyer_maker":
            fields[name] = _sides(values.tolist())
        else:
            fields[name] = (np.ascontiguousarray(values), np.zeros(len(values), dtype=bool))
    return fields


def _slow_fields(texts: dict[str, Sequence[str]]) -> Fields:
    fields: Fields = {}
    for name, values in texts.items():
        if name in ("time", "ts"):
            fields[name] = _times(values)
        elif name == "is_buyer_maker":
            fields[name] = _sides(values)
        elif name in ("id", "trades"):
            fields[name] = _ints(values, -1 if name == "id" else 0)
        else:
            fields[name] = _floats(values)
    return fields


def _transpose(
    rows: list[list[str]], width: int, index: dict[str, int]
) -> tuple[dict[str, Sequence[str]], Mask]:
    """The needed columns of a chunk as string sequences, and rows of the wrong width."""
    wrong = np.fromiter((len(r) != width for r in rows), dtype=bool, count=len(rows))
    if wrong.any():
        blank = [""] * width
        rows = [blank if bad else r for r, bad in zip(rows, wrong.tolist(), strict=True)]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]
    return {name: columns[i] for name, i in index.items()}, wrong


# ---- conversions ------------------------------------------------------------------------


def _floats(texts: Sequence[str]) -> tuple[npt.NDArray[np.float64], Mask]:
    n = len(texts)
    bad = np.zeros(n, dtype=bool)
    try:
        return np.fromiter(map(float, texts), dtype=np.float64, count=n), bad
    except ValueError:
        pass
    out = np.empty(n, dtype=np.float64)
    for i, text in enumerate(texts):
        try:
            out[i] = float(text)
        except ValueError:
            out[i] = math.nan
            bad[i] = True
    return out, bad


def _int_or_none(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            return None
        if not f.is_integer():
            return None
        value = int(f)
    return value if -_INT64_MAX <= value <= _INT64_MAX else None


def _ints(texts: Sequence[str], fill: int) -> tuple[npt.NDArray[np.int64], Mask]:
    n = len(texts)
    bad = np.zeros(n, dtype=bool)
    try:
        return np.fromiter(map(int, texts), dtype=np.int64, count=n), bad
    except (ValueError, OverflowError):
        pass
    out = np.empty(n, dtype=np.int64)
    for i, text in enumerate(texts):
        value = _int_or_none(text)
        bad[i] = value is None
        out[i] = fill if value is None else value
    return out, bad


def _epoch_factor(magnitude: float) -> int:
    if magnitude < SECONDS_BELOW:
        return NS_PER_S
    if magnitude < MILLIS_BELOW:
        return 1_000_000
    if magnitude < MICROS_BELOW:
        return 1_000
    return 1


def _iso_ns(text: str) -> int:
    """ISO-8601 → ns; naive times are UTC. Raises ValueError."""
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1_000


def _time_ns_or_none(text: str) -> int | None:
    value = _int_or_none(text)
    if value is not None:
        ns = value * _epoch_factor(abs(value))
        return ns if -_INT64_MAX <= ns <= _INT64_MAX else None
    try:
        f = float(text)
    except ValueError:
        try:
            return _iso_ns(text)
        except ValueError:
            return None
    if not math.isfinite(f):
        return None
    ns_f = round(f * _epoch_factor(abs(f)))
    return ns_f if -_INT64_MAX <= ns_f <= _INT64_MAX else None


def _epoch_ns(raw: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], Mask]:
    """Integer epoch values (unit by magnitude) → ns; beyond the int64 ns range → 0 + bad."""
    mag = np.abs(raw)
    factor = np.where(
        mag < SECONDS_BELOW,
        NS_PER_S,
        np.where(mag < MILLIS_BELOW, 1_000_000, np.where(mag < MICROS_BELOW, 1_000, 1)),
    ).astype(np.int64)
    bad = mag.astype(np.float64) * factor > _INT64_MAX
    return np.where(bad, 0, raw * np.where(bad, 0, factor)), bad


def _times(texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], Mask]:
    """Epoch numbers (unit by magnitude) or ISO-8601 → int64 ns; unparseable → 0 + bad."""
    n = len(texts)
    try:
        raw = np.fromiter(map(int, texts), dtype=np.int64, count=n)
    except (ValueError, OverflowError):
        raw = None
    if raw is not None:
        return _epoch_ns(raw)
    out = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for i, text in enumerate(texts):
        value = _time_ns_or_none(text)
        if value is None:
            bad[i] = True
        else:
            out[i] = value
    return out, bad


def _sides(texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], Mask]:
    """is_buyer_maker → aggressor side: true (maker bought) = -1 sell, false = +1 buy."""
    side = np.fromiter(map(_SIDES.get, texts, repeat(0)), dtype=np.int64, count=len(texts))
    bad = side == 0
    for i in np.flatnonzero(bad).tolist():
        loose = _SIDES_LOOSE.get(texts[i].strip().lower(), 0)
        side[i] = loose
        bad[i] = loose == 0
    return side, bad


# ---- per-kind chunks --------------------------------------------------------------------


def _trade_columns(fields: Fields, wrong: Mask) -> tuple[Columns, Mask]:
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


def _bar_columns(fields: Fields, wrong: Mask) -> tuple[Columns, Mask]:
    ts_event, bad = fields["ts"]
    bad = bad | wrong
    cols: Columns = {"ts_event": ts_event}
    for name in ("open", "high", "low", "close", "volume"):
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
        for name in ("open", "high", "low", "close"):
            cols[name] = cols[name].copy()
            cols[name][bad] = math.nan
    cols["flags"] = np.zeros(n, dtype=np.int64)
    return cols, bad


def _concat(parts: Iterable[Columns], kind: Kind) -> Columns:
    parts = list(parts)
    if not parts:
        names = (
            ("ts_event", "price", "size", "side", "trade_id", "seq")
            if kind is Kind.TRADE
            else ("ts_event", "open", "high", "low", "close", "volume", "trades", "vwap", "flags")
        )
        ints = {"ts_event", "side", "trade_id", "seq", "trades", "flags"}
        return {k: np.zeros(0, dtype=np.int64 if k in ints else np.float64) for k in names}
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _infer_timeframe(ts_event: npt.NDArray[np.int64], path: Path) -> str:
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
