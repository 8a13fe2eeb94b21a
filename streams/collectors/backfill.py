"""REST backfill of missing 1m bars: find the holes in TimescaleDB, fetch only those.

Why: a collector's gap markers say *that* data is missing; this fills the 1m bars back in
from the venue's history (Binance `GET /api/v3/klines`, documented on Binance's "Market Data
endpoints" page). Only minutes absent from the namespace's `bars` table are requested and
written, with `ON CONFLICT DO NOTHING` on the natural key, so running it twice or alongside a
live worker never duplicates a bar nor overwrites one the stream stored meanwhile. Requests
are paced (`backfill_requests_per_s`) and 429/418 answers are honoured (`Retry-After`).

Higher timeframes are not recomputed here: the stream builds those from live data.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import asyncpg
import numpy as np
import structlog

from schemas.ddl import check_ident
from streams.collectors.binance import BinanceCollector
from streams.settings import Settings
from streams.sinks.timescale import TimescaleWriter

log = structlog.get_logger(__name__)

MINUTE_MS: Final = 60_000
PAGE: Final = 1000  # klines per request (Binance's maximum)
_RETRY_STATUS: Final = frozenset({418, 429, 500, 502, 503, 504})


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


class RateLimiter:
    """At most `rate` acquisitions per second, evenly spaced (no bursts against a venue)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            if wait > 0:
                await asyncio.sleep(wait)
            self._next = max(now, self._next) + self.interval

    def hold(self, seconds: float) -> None:
        """The venue asked us to back off: no request before `seconds` from now."""
        self._next = max(self._next, time.monotonic() + seconds)


def minute_runs(missing: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted minute starts (ms) → [first, last] runs of consecutive minutes."""
    runs: list[tuple[int, int]] = []
    for t in sorted(missing):
        if runs and t == runs[-1][1] + MINUTE_MS:
            runs[-1] = (runs[-1][0], t)
        else:
            runs.append((t, t))
    return runs


class BinanceKlines:
    """`GET /api/v3/klines` with pacing and retries."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session
        self.limiter = RateLimiter(settings.backfill_requests_per_s)
        self.requests = 0

    async def fetch(self, venue_symbol: str, first_ms: int, last_ms: int) -> list[list[Any]]:
        """Klines opening in [first_ms, last_ms], paginated."""
        out: list[list[Any]] = []
        start = first_ms
        while start <= last_ms:
            page = await self._get(
                {
                    "symbol": venue_symbol,
                    "interval": "1m",
                    "startTime": str(start),
                    "endTime": str(last_ms + MINUTE_MS - 1),
                    "limit": str(PAGE),
                }
            )
            rows = [r for r in page if isinstance(r, list) and r and isinstance(r[0], int)]
            out += [r for r in rows if first_ms <= r[0] <= last_ms and _valid_kline(r)]
            if len(page) < PAGE or not rows:
                break
            start = rows[-1][0] + MINUTE_MS
        return out

    async def _get(self, params: dict[str, str]) -> list[Any]:
        url = f"{self.settings.binance_rest_url.rstrip('/')}/api/v3/klines"
        for attempt in range(self.settings.backfill_max_retries + 1):
            await self.limiter.acquire()
            self.requests += 1
            try:
                async with self.session.get(url, params=params) as resp:
                    if resp.status == 200:
                        doc = await resp.json(content_type=None)
                        if not isinstance(doc, list):
                            raise ValueError(f"klines answer is not a list: {str(doc)[:200]}")
                        return doc
                    body = (await resp.text())[:200]
                    if resp.status not in _RETRY_STATUS:
                        raise RuntimeError(f"klines HTTP {resp.status}: {body}")
                    retry_after = _retry_after(resp.headers.get("Retry-After"), attempt)
                    log.warning(
                        "klines throttled", status=resp.status, retry_after_s=retry_after, body=body
                    )
                    self.limiter.hold(retry_after)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("klines request failed", error=repr(exc), attempt=attempt)
                self.limiter.hold(min(30.0, 0.5 * 2**attempt))
        raise RuntimeError(f"klines: gave up after {self.settings.backfill_max_retries} retries")


def _valid_kline(row: list[Any]) -> bool:
    """A closed, sane 1m kline; anything else is logged and skipped, never stored."""
    try:
        o, h, lo, c, v = (float(row[i]) for i in range(1, 6))
        float(row[7])
        ok = (
            int(row[8]) >= 0
            and all(math.isfinite(x) and x > 0 for x in (o, h, lo, c))
            and lo <= min(o, c) <= max(o, c) <= h
            and v >= 0
        )
    except (ValueError, TypeError, IndexError):
        ok = False
    if not ok:
        log.warning("kline skipped", row=str(row)[:200])
    return ok


def _retry_after(header: str | None, attempt: int) -> float:
    try:
        return max(0.0, float(header)) if header is not None else min(60.0, 2.0**attempt)
    except ValueError:
        return min(60.0, 2.0**attempt)


def kline_columns(rows: list[list[Any]]) -> dict[str, Any]:
    """Binance kline arrays → bar columns (open time is the bar's time)."""
    volume = np.array([float(r[5]) for r in rows])
    quote_volume = np.array([float(r[7]) for r in rows])
    with np.errstate(divide="ignore", invalid="ignore"):
        vwap = np.where(volume > 0, quote_volume / np.where(volume > 0, volume, 1), math.nan)
    return {
        "ts": [datetime.fromtimestamp(int(r[0]) / 1000, tz=UTC) for r in rows],
        "open": np.array([float(r[1]) for r in rows]),
        "high": np.array([float(r[2]) for r in rows]),
        "low": np.array([float(r[3]) for r in rows]),
        "close": np.array([float(r[4]) for r in rows]),
        "volume": volume,
        "trades": np.array([int(r[8]) for r in rows], dtype=np.int64),
        "vwap": vwap,
    }


async def insert_missing_bars(
    conn: asyncpg.Connection, schema: str, venue: str, symbol: str, cols: dict[str, Any]
) -> int:
    """Insert 1m bars whose key is free; returns how many were inserted."""
    vwap = [None if not math.isfinite(v) else float(v) for v in cols["vwap"]]
    status = await conn.execute(
        f"INSERT INTO {check_ident(schema)}.bars "
        "(ts, venue, symbol, timeframe, open, high, low, close, volume, trades, vwap, flags) "
        "SELECT t, $1, $2, '1m', o, h, l, c, v, n, w, 0 FROM unnest("
        "$3::timestamptz[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], "
        "$8::float8[], $9::int8[], $10::float8[]) AS u(t, o, h, l, c, v, n, w) "
        "ON CONFLICT (venue, symbol, timeframe, ts) DO NOTHING",
        venue,
        symbol,
        cols["ts"],
        *(cols[k].tolist() for k in ("open", "high", "low", "close", "volume", "trades")),
        vwap,
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


async def backfill_binance(
    settings: Settings, symbol: str, start: datetime, end: datetime
) -> BackfillReport:
    """Fill the 1m bars missing from `bars` for minutes opening in [start, end)."""
    venue = BinanceCollector.venue
    first = math.ceil(start.timestamp() * 1000 / MINUTE_MS) * MINUTE_MS
    # only closed bars: the current minute is still forming
    closed_end = min(end.timestamp() * 1000, time.time() * 1000 - MINUTE_MS + 1)
    wanted = set(range(first, math.ceil(closed_end / MINUTE_MS) * MINUTE_MS, MINUTE_MS))
    report = BackfillReport(venue, symbol, start.isoformat(), end.isoformat(), len(wanted))
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
        log.info("backfill plan", symbol=symbol, expected=len(wanted), missing=len(missing))
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            klines = BinanceKlines(settings, session)
            got: set[int] = set()
            for run_first, run_last in minute_runs(missing):
                rows = await klines.fetch(BinanceCollector.to_venue(symbol), run_first, run_last)
                rows = [r for r in rows if r[0] in missing and r[0] not in got]
                if not rows:
                    continue
                got.update(r[0] for r in rows)
                async with writer.pool.acquire() as conn:
                    report.written += await insert_missing_bars(
                        conn, settings.pg_schema, venue, symbol, kline_columns(rows)
                    )
            report.requests = klines.requests
        report.unavailable = [
            datetime.fromtimestamp(ms / 1000, tz=start.tzinfo).isoformat()
            for ms in sorted(missing - got)
        ]
    finally:
        await writer.close()
    log.info("backfill done", **{k: v for k, v in report.as_dict().items() if k != "unavailable"})
    return report
