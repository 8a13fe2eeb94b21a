"""REST backfill of missing 1m bars: find the holes in TimescaleDB, fetch only those.

Why: a collector's gap markers say *that* data is missing; this fills the 1m bars back in
from the venue's history (`HISTORY`: Binance klines, OANDA candles; the venue modules know
the endpoints and formats, `streams.venues.history` the pacing). Only minutes absent
from the namespace's `bars` table are requested and written, with `ON CONFLICT DO NOTHING`
on the natural key, so running it twice or alongside a live worker never duplicates a bar
nor overwrites one the stream stored meanwhile. Requests are paced
(`backfill_requests_per_s`) and 429/418 answers are honoured (`Retry-After`).

Higher timeframes are not recomputed here: the stream builds those from live data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import asyncpg
import structlog

from schemas.ddl import check_ident
from streams.settings import Settings
from streams.sinks.timescale import TimescaleWriter
from streams.venues.binance import BinanceKlines
from streams.venues.history import MINUTE_MS, HistorySource, MinuteBar
from streams.venues.oanda import OandaCandles

log = structlog.get_logger(__name__)


def _binance(settings: Settings, session: aiohttp.ClientSession) -> HistorySource:
    return BinanceKlines(settings, session)


def _oanda(settings: Settings, session: aiohttp.ClientSession) -> HistorySource:
    return OandaCandles(settings, session)


HISTORY: Final[dict[str, Callable[[Settings, aiohttp.ClientSession], HistorySource]]] = {
    "binance": _binance,
    "oanda": _oanda,
}


@dataclass
class BackfillReport:
    venue: str
    symbol: str
    start: str
    end: str
    expected: int = 0  # closed 1m bars in the range
    present: int = 0  # already stored
    missing: int = 0  # absent before the backfill
    requests: int = 0
    written: int = 0
    unavailable: list[str] = field(default_factory=list)  # minutes the venue has no bar for

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def minute_runs(missing: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted minute starts (ms) → [first, last] runs of consecutive minutes."""
    runs: list[tuple[int, int]] = []
    for t in sorted(missing):
        if runs and t == runs[-1][1] + MINUTE_MS:
            runs[-1] = (runs[-1][0], t)
        else:
            runs.append((t, t))
    return runs


async def insert_missing_bars(
    conn: asyncpg.Connection, schema: str, venue: str, symbol: str, bars: list[MinuteBar]
) -> int:
    """Insert 1m bars whose key is free; returns how many were inserted."""
    status = await conn.execute(
        f"INSERT INTO {check_ident(schema)}.bars "
        "(ts, venue, symbol, timeframe, open, high, low, close, volume, trades, vwap, flags) "
        "SELECT t, $1, $2, '1m', o, h, l, c, v, n, w, 0 FROM unnest("
        "$3::timestamptz[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], "
        "$8::float8[], $9::int8[], $10::float8[]) AS u(t, o, h, l, c, v, n, w) "
        "ON CONFLICT (venue, symbol, timeframe, ts) DO NOTHING",
        venue,
        symbol,
        [datetime.fromtimestamp(b.ms / 1000, tz=UTC) for b in bars],
        [b.open for b in bars],
        [b.high for b in bars],
        [b.low for b in bars],
        [b.close for b in bars],
        [b.volume for b in bars],
        [b.trades for b in bars],
        [b.vwap if math.isfinite(b.vwap) else None for b in bars],
    )
    return int(status.split()[-1])


async def stored_minutes(
    conn: asyncpg.Connection,
    schema: str,
    venue: str,
    symbol: str,
    *,
    start: datetime,
    end: datetime,
) -> set[int]:
    rows = await conn.fetch(
        f"SELECT (extract(epoch FROM ts) * 1000)::bigint AS ms FROM {check_ident(schema)}.bars "
        "WHERE venue = $1 AND symbol = $2 AND timeframe = '1m' AND ts >= $3 AND ts < $4",
        venue,
        symbol,
        start,
        end,
    )
    return {int(r["ms"]) for r in rows}


async def backfill(
    settings: Settings, venue: str, symbol: str, start: datetime, end: datetime
) -> BackfillReport:
    """Fill the 1m bars of `venue` missing from `bars` for minutes opening in [start, end).

    ValueError before anything is contacted when the venue has no history source or its
    credentials are missing.
    """
    make_source = HISTORY.get(venue)
    if make_source is None:
        raise ValueError(f"no REST history for {venue!r} (have: {', '.join(HISTORY)})")
    first = math.ceil(start.timestamp() * 1000 / MINUTE_MS) * MINUTE_MS
    # only closed bars: the current minute is still forming
    closed_end = min(end.timestamp() * 1000, time.time() * 1000 - MINUTE_MS + 1)
    wanted = set(range(first, math.ceil(closed_end / MINUTE_MS) * MINUTE_MS, MINUTE_MS))
    report = BackfillReport(venue, symbol, start.isoformat(), end.isoformat(), len(wanted))
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        source = make_source(settings, session)  # a missing token fails here, first
        writer = TimescaleWriter(settings)
        await writer.start()
        try:
            assert writer.pool is not None
            async with writer.pool.acquire() as conn:
                present = await stored_minutes(
                    conn, settings.pg_schema, venue, symbol, start=start, end=end
                )
            missing = wanted - present
            report.present = len(wanted & present)
            report.missing = len(missing)
            log.info(
                "backfill plan",
                venue=venue,
                symbol=symbol,
                expected=len(wanted),
                missing=len(missing),
            )
            got: set[int] = set()
            for run_first, run_last in minute_runs(missing):
                bars = await source.fetch(symbol, run_first, run_last)
                bars = [b for b in bars if b.ms in missing and b.ms not in got]
                if not bars:
                    continue
                got.update(b.ms for b in bars)
                async with writer.pool.acquire() as conn:
                    report.written += await insert_missing_bars(
                        conn, settings.pg_schema, venue, symbol, bars
                    )
            report.requests = source.requests
        finally:
            await writer.close()
    report.unavailable = [
        datetime.fromtimestamp(ms / 1000, tz=start.tzinfo).isoformat()
        for ms in sorted(missing - got)
    ]
    log.info("backfill done", **{k: v for k, v in report.as_dict().items() if k != "unavailable"})
    return report
