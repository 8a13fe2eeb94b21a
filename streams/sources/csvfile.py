"""File source: replay trades or OHLCV bars from a CSV file (`sepstream demo --source csv:PATH`).

Why: backtests and demos on real history without a venue connection. The form is detected
from the first row:

- **Binance trade dump** (`streams.sources.csvtrades`), with or without a header row →
  trade events;
- **OHLCV** with a header row, or a **Binance kline dump** without one
  (`streams.sources.csvbars`) → bar events.

Files may be plain, gzip (``.gz``) or a zip holding one CSV (``.zip``, as Binance publishes).
Numbers and times are read as `streams.sources.csvvalues` says (epoch numbers by magnitude,
or ISO-8601; UTC).

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
import os
import re
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import numpy as np
import numpy.typing as npt
import structlog

from schemas.events import SYMBOL_RE, TIMEFRAMES, VENUE_RE, Kind
from streams.sources.csvbars import (
    BAR_COLUMNS,
    BAR_NAMES,
    BAR_REQUIRED,
    BAR_TYPES,
    BINANCE_KLINES,
    KLINE_FIELDS,
    bar_columns,
    infer_timeframe,
)
from streams.sources.csvtrades import (
    BINANCE_TRADES,
    TRADE_COLUMNS,
    TRADE_NAMES,
    TRADE_TYPES,
    is_side,
    sides,
    trade_columns,
)
from streams.sources.csvvalues import (
    Assemble,
    Columns,
    Fields,
    Mask,
    epoch_ns,
    floats,
    ints,
    times,
)
from streams.sources.synthetic import EventSink

log = structlog.get_logger(__name__)

QUOTE_ASSETS: Final = (
    "USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD", "EUR", "GBP", "JPY", "TRY", "BTC", "ETH", "BNB",
)  # fmt: skip
_QUOTES_LONGEST_FIRST: Final = tuple(sorted(QUOTE_ASSETS, key=len, reverse=True))
_CHUNK_BYTES: Final = 1 << 24  # characters of lines converted at a time
_PRODUCE_ROWS: Final = 65_536  # rows per producer.add() when replaying
_BAD_LINES_KEPT: Final = 100
_FAST_TYPES: Final[dict[str, str]] = {**TRADE_TYPES, **BAR_TYPES}


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
        assemble = trade_columns if kind is Kind.TRADE else bar_columns
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
        tf = timeframe or infer_timeframe(columns["ts_event"], path)
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
            if not is_side(cells[5]):
                raise ValueError(
                    f"{path}: a file without a header must be a Binance trade dump "
                    "(id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match]); its 6th "
                    f"field is {cells[5]!r}, not true/false. OHLCV files need the header "
                    "row ts,open,high,low,close,volume"
                )
            return Kind.TRADE, dict(BINANCE_TRADES), False
        if len(cells) == KLINE_FIELDS:
            return Kind.BAR, dict(BINANCE_KLINES), False
        raise ValueError(
            f"{path}: {len(cells)} fields and no header: not a Binance trade (6-7 fields) or "
            "kline (12 fields) dump; OHLCV files need the header ts,open,high,low,close,volume"
        )
    names = [c.lower() for c in cells]
    bars = _find_columns(names, BAR_NAMES)
    if all(k in bars for k in BAR_REQUIRED):
        return Kind.BAR, bars, True
    trades = _find_columns(names, TRADE_NAMES)
    if len(trades) == len(TRADE_NAMES):
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
            fields[name] = epoch_ns(values)
        elif name == "ts":
            fields[name] = times(values.tolist())
        elif name == "is_buyer_maker":
            fields[name] = sides(values.tolist())
        else:
            fields[name] = (np.ascontiguousarray(values), np.zeros(len(values), dtype=bool))
    return fields


def _slow_fields(texts: dict[str, Sequence[str]]) -> Fields:
    fields: Fields = {}
    for name, values in texts.items():
        if name in ("time", "ts"):
            fields[name] = times(values)
        elif name == "is_buyer_maker":
            fields[name] = sides(values)
        elif name in ("id", "trades"):
            fields[name] = ints(values, -1 if name == "id" else 0)
        else:
            fields[name] = floats(values)
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


def _concat(parts: Iterable[Columns], kind: Kind) -> Columns:
    parts = list(parts)
    if not parts:
        names = TRADE_COLUMNS if kind is Kind.TRADE else BAR_COLUMNS
        ints = {"ts_event", "side", "trade_id", "seq", "trades", "flags"}
        return {k: np.zeros(0, dtype=np.int64 if k in ints else np.float64) for k in names}
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
