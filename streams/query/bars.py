"""Read path for bars (`sepstream bars`, HTTP `GET /bars`): Redis → TimescaleDB → venue REST.

A request asks for the `limit` newest closed bars of one instrument and timeframe, oldest
first. The tiers are asked in order and the first that *hits* serves the request alone:

- **redis** hits when the instrument's `bars:{tf}` sorted set holds at least `limit` bars;
  the answer is its newest `limit`. The Redis sink keeps the newest `redis_bars_keep` (500)
  bars there, so a larger `limit` is always a Redis miss.
- **timescaledb** hits when the `bars` table holds at least `limit` bars of the instrument;
  the answer is the newest `limit`.
- **rest** (1m, venues with a REST history in `streams.venues.backfill.HISTORY`:
  Binance, OANDA) fetches the `limit` periods before the current one from the venue,
  stores the bars neither store had (TimescaleDB with `ON CONFLICT DO NOTHING`, so a bar
  the stream stored always wins; Redis as the sink writes, including the stores' bars of
  the answer Redis lacked), and hits when the answer then has `limit` bars. The whole fetch
  is bounded by `read_rest_timeout_s` (3 s). A reader made with `allow_rest=False` never
  calls a venue (tier `disabled`): the worker's anonymous HTTP `/bars` is such a reader
  unless `SEPSTREAM_READ_HTTP_REST` is on, so an unauthenticated request cannot make the
  worker call out; `sepstream bars` (an operator at a shell) may.

"Hit" is about count, not wall-clock coverage: bars exist only for periods with trades, so
a quiet instrument's newest `limit` bars can span far more than `limit` periods, and a store
that stopped receiving data still hits with its (older) newest bars. When no tier hits, the
answer is the newest `limit` bars of all tiers together (`source: partial`), preferring the
stream's version of a bar (TimescaleDB, then Redis) over the venue's.

Each tier consulted counts one hit, miss or error (the store could not be read; the request
falls through): Prometheus `sepstream_read_requests_total{tier,result}` in the process that
served it, and `HINCRBY {prefix}stats:readpath {tier}:{result}` (plus field `requests`) in
Redis so that another process (`sepstream status`) can show hit ratios.

With `include_forming` (1m only) the instrument's forming bars (written by the bars agent to
`{prefix}forming:1m:{venue}:{symbol}`) newer than the newest closed bar are appended, marked
`"forming": true`; they are not counted towards `limit` nor towards a hit.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import asyncpg
import orjson
import structlog

from schemas.batch import MarketEventBatch
from schemas.ddl import check_ident
from schemas.events import SYMBOL_RE, TIMEFRAMES, VENUE_RE, Kind
from streams.ops.metrics import READ_REQUESTS, READ_SECONDS
from streams.settings import Settings
from streams.sinks.redis import RedisWriter, forming_key, read_stats_key
from streams.sinks.timescale import TimescaleWriter
from streams.stores.connections import pg_pool
from streams.stores.provision import writer_pool
from streams.venues import COLLECTORS
from streams.venues.backfill import HISTORY, insert_missing_bars
from streams.venues.base import MalformedFrameError
from streams.venues.history import MinuteBar

if TYPE_CHECKING:
    from streams.venues.history import HistorySource

log = structlog.get_logger(__name__)

TIERS: Final = ("redis", "timescaledb", "rest")
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
FIELDS: Final = ("open", "high", "low", "close", "volume", "trades", "vwap", "flags")


class BadRequestError(ValueError):
    """The request itself is wrong (HTTP 400, CLI exit 2)."""


class NotFoundError(LookupError):
    """No tier knows the instrument (HTTP 404, CLI exit 1)."""


@dataclass(frozen=True)
class BarsRequest:
    symbol: str
    venue: str | None
    timeframe: str = "1m"
    limit: int = 500
    include_forming: bool = False

    @classmethod
    def parse(
        cls,
        symbol: str,
        venue: str | None,
        timeframe: str,
        limit: int,
        include_forming: bool,
        *,
        max_limit: int,
    ) -> BarsRequest:
        """Validated request; a venue's own symbol spelling is accepted when the venue is given."""
        if timeframe not in TIMEFRAMES:
            raise BadRequestError(
                f"unknown timeframe {timeframe!r}: one of {', '.join(TIMEFRAMES)}"
            )
        if not 1 <= limit <= max_limit:
            raise BadRequestError(f"limit {limit} out of range: 1..{max_limit}")
        if include_forming and timeframe != "1m":
            raise BadRequestError("forming bars are kept for 1m only")
        if venue is not None:
            venue = venue.strip().lower()
            if not VENUE_RE.match(venue):
                raise BadRequestError(f"bad venue {venue!r}")
        symbol = _normalize_symbol(symbol.strip(), venue)
        return cls(symbol, venue, timeframe, limit, include_forming)

    @classmethod
    def from_query(cls, query: Mapping[str, str], *, max_limit: int) -> BarsRequest:
        """From HTTP query parameters: symbol, venue, tf, limit, forming."""
        symbol = query.get("symbol")
        if not symbol:
            raise BadRequestError("symbol is required: /bars?symbol=BTC-USDT&venue=binance")
        raw_limit = query.get("limit", "500")
        try:
            limit = int(raw_limit)
        except ValueError:
            raise BadRequestError(f"limit {raw_limit!r} is not an integer") from None
        forming = query.get("forming", "false").strip().lower()
        if forming not in {"1", "true", "yes", "0", "false", "no"}:
            raise BadRequestError(f"forming {forming!r} is not a boolean")
        return cls.parse(
            symbol,
            query.get("venue") or None,
            query.get("tf", "1m"),
            limit,
            forming in {"1", "true", "yes"},
            max_limit=max_limit,
        )


def _normalize_symbol(symbol: str, venue: str | None) -> str:
    if SYMBOL_RE.match(symbol.upper()):
        return symbol.upper()

    if venue in COLLECTORS:
        try:
            normalized = COLLECTORS[venue].from_venue(symbol)
        except (MalformedFrameError, ValueError):
            normalized = ""
        if SYMBOL_RE.match(normalized):
            return normalized
    raise BadRequestError(f"bad symbol {symbol!r}: BASE-QUOTE like BTC-USDT")


@dataclass
class BarsResult:
    venue: str
    symbol: str
    timeframe: str
    limit: int
    source: str  # the tier that hit, "partial" when none did, "none" when nothing was found
    tiers: dict[str, str]  # tier → hit | miss | error | unavailable | disabled, per tier asked
    bars: list[dict[str, Any]]  # closed, oldest first (at most `limit`)
    forming: list[dict[str, Any]] = field(default_factory=list)
    stored_back: int = 0  # bars fetched from the venue and stored

    def as_dict(self) -> dict[str, Any]:
        rows = [{**b, "forming": False} for b in self.bars]
        rows += [{**b, "forming": True} for b in self.forming]
        return {
            "venue": self.venue,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "limit": self.limit,
            "source": self.source,
            "tiers": self.tiers,
            "count": len(self.bars),
            "stored_back": self.stored_back,
            "bars": [{"time": iso_time(b["ts"]), **b} for b in rows],
        }


@functools.lru_cache(maxsize=1 << 16)  # the same recent bars are served again and again
def iso_time(ts_ns: int) -> str:
    return (EPOCH + timedelta(microseconds=ts_ns // 1000)).isoformat()


def _bar(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One bar as served: ts (open time, ns) and the OHLCV fields, vwap None when undefined."""
    vwap = doc.get("vwap")
    return {
        "ts": int(doc["ts"]),
        **{k: float(doc[k]) for k in ("open", "high", "low", "close", "volume")},
        "trades": int(doc["trades"]),
        "vwap": None if vwap is None or not math.isfinite(vwap) else float(vwap),
        "flags": int(doc["flags"]),
    }


def _bars_batch(venue: str, symbol: str, tf: str, bars: list[dict[str, Any]]) -> MarketEventBatch:
    """Served bars as a bar record, for the Redis writer."""
    cols: dict[str, Any] = {k: [b[k] for b in bars] for k in ("ts", *FIELDS)}
    cols["vwap"] = [math.nan if v is None else v for v in cols["vwap"]]
    cols["ts_event"] = cols.pop("ts")
    cols["ts_recv"] = [time.time_ns()] * len(bars)
    return MarketEventBatch.from_columns(Kind.BAR, venue, symbol, cols, timeframe=tf)


class BarReader:
    """One Redis client (its own connection pool), one asyncpg pool and, when a venue REST
    tier is used, one HTTP session whose rate limiter spans requests. Start once, share.

    `allow_rest=False`: the venue REST tier is never asked (reported `disabled`).
    """

    def __init__(self, settings: Settings, *, allow_rest: bool = True) -> None:
        self.settings = settings
        self.allow_rest = allow_rest
        self.schema = check_ident(settings.pg_schema)
        self.prefix = settings.redis_prefix
        self.redis = RedisWriter(settings)  # its client is the read client too
        self.pool: asyncpg.Pool | None = None  # the read-only role: every query
        self._writer_pool: asyncpg.Pool | None = None  # the sinks' role: REST store-back only
        self._session: aiohttp.ClientSession | None = None
        self._history: dict[str, HistorySource] = {}  # venue → its REST source, made lazily
        self._schema_ready = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect what is not connected; a store that is down is retried at the next read
        (its tier reports `error` and the request falls through to the next one)."""
        async with self._lock:
            if self.redis.client is None:
                try:
                    await self.redis.start()
                except Exception as exc:
                    await self.redis.close()
                    log.warning("read path: redis unreachable", error=repr(exc))
            if self.pool is None:
                try:
                    self.pool = await pg_pool(
                        self.settings, "reader", min_size=1, max_size=4, timeout=5
                    )
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("read path: timescaledb unreachable", error=repr(exc))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self._writer_pool is not None:
            await self._writer_pool.close()
            self._writer_pool = None
        await self.redis.close()

    async def __aenter__(self) -> BarReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- the request ---------------------------------------------------------------------
    async def read(self, req: BarsRequest) -> BarsResult:
        started = time.perf_counter()
        await self.start()
        venue = req.venue or await self._resolve_venue(req.symbol)
        tf, limit = req.timeframe, req.limit
        tiers: dict[str, str] = {}
        stored_back = 0
        redis_bars: list[dict[str, Any]] = []
        forming: list[dict[str, Any]] = []
        try:
            redis_bars, forming = await self._from_redis(venue, req)
            tiers["redis"] = "hit" if len(redis_bars) >= limit else "miss"
        except Exception as exc:
            tiers["redis"] = "error"
            log.warning("read path: redis unreadable", error=repr(exc))
        if tiers["redis"] == "hit":
            source, answer = "redis", redis_bars[-limit:]
        else:
            rows: list[dict[str, Any]] = []
            try:
                rows = await self._from_timescale(venue, req.symbol, tf, limit)
                tiers["timescaledb"] = "hit" if len(rows) >= limit else "miss"
            except Exception as exc:
                tiers["timescaledb"] = "error"
                log.warning("read path: timescaledb unreadable", error=repr(exc))
            if tiers["timescaledb"] == "hit":
                source, answer = "timescaledb", rows
            else:
                # ts → bar from every tier; the durable store's version wins over the cache's
                in_redis = {b["ts"] for b in redis_bars}
                have = {b["ts"]: b for b in redis_bars} | {b["ts"]: b for b in rows}
                fetched = await self._from_rest(venue, req, tiers)
                new = [b for b in fetched if b["ts"] not in have]
                have |= {b["ts"]: b for b in new}
                answer = [have[t] for t in sorted(have)][-limit:]
                if tiers["rest"] in ("hit", "miss"):
                    tiers["rest"] = "hit" if len(answer) >= limit else "miss"
                if new:
                    stored_back = await self._store_back(
                        venue, req, new, [b for b in answer if b["ts"] not in in_redis]
                    )
                source = "rest" if tiers["rest"] == "hit" else "partial" if answer else "none"
        newest = answer[-1]["ts"] if answer else -1
        result = BarsResult(
            venue=venue,
            symbol=req.symbol,
            timeframe=tf,
            limit=limit,
            source=source,
            tiers=tiers,
            bars=answer,
            forming=[b for b in forming if b["ts"] > newest],
            stored_back=stored_back,
        )
        await self._count(tiers)
        READ_SECONDS.labels(source).observe(time.perf_counter() - started)
        return result

    async def _count(self, tiers: dict[str, str]) -> None:
        consulted = {t: r for t, r in tiers.items() if r not in ("unavailable", "disabled")}
        for tier, res in consulted.items():
            READ_REQUESTS.labels(tier, res).inc()
        try:
            assert self.redis.client is not None, "redis not connected"
            pipe = self.redis.client.pipeline(transaction=False)
            name = read_stats_key(self.prefix)
            pipe.hincrby(name, "requests", 1)
            for tier, res in consulted.items():
                pipe.hincrby(name, f"{tier}:{res}", 1)
            await pipe.execute()
        except Exception as exc:  # Redis down: the Prometheus counters still moved
            log.warning("read path: stats not recorded in redis", error=repr(exc))

    async def _resolve_venue(self, symbol: str) -> str:
        """The one venue that has bars of `symbol`: Redis's instrument set, else TimescaleDB."""
        venues: set[str] = set()
        try:
            assert self.redis.client is not None, "redis not connected"
            members = await self.redis.client.smembers(f"{self.prefix}instruments")
            for m in members:
                venue, _, sym = (m.decode() if isinstance(m, bytes) else str(m)).partition(":")
                if sym == symbol:
                    venues.add(venue)
        except Exception as exc:
            log.warning("read path: redis unreadable", error=repr(exc))
        if not venues and self.pool is not None:
            try:
                rows = await self.pool.fetch(
                    f"SELECT venue FROM {self.schema}.bars WHERE symbol = $1 "
                    "GROUP BY venue LIMIT 16",
                    symbol,
                )
            except asyncpg.UndefinedTableError:
                rows = []
            venues = {r["venue"] for r in rows}
        if not venues:
            raise NotFoundError(
                f"no bars of {symbol} on any venue; pass a venue (binance fetches from its "
                "REST API)"
            )
        if len(venues) > 1:
            raise BadRequestError(f"{symbol} has bars on {', '.join(sorted(venues))}: pass a venue")
        return venues.pop()

    async def _from_redis(
        self, venue: str, req: BarsRequest
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The newest `limit` bars of the sorted set (all it has when fewer), and the forming
        bars. Members are the sink's JSON documents, served as they are."""
        if self.redis.client is None:
            raise ConnectionError("redis not connected")
        pipe = self.redis.client.pipeline(transaction=False)
        pipe.zrange(f"{self.prefix}bars:{req.timeframe}:{venue}:{req.symbol}", -req.limit, -1)
        if req.include_forming:
            pipe.get(forming_key(self.prefix, venue, req.symbol))
        got = await pipe.execute()
        bars: list[dict[str, Any]] = orjson.loads(b"[" + b",".join(got[0]) + b"]")
        forming = orjson.loads(got[1]) if req.include_forming and got[1] else []
        return bars, forming

    async def _from_timescale(
        self, venue: str, symbol: str, tf: str, limit: int
    ) -> list[dict[str, Any]]:
        """The newest `limit` bars, oldest first; none when the table does not exist yet."""
        if self.pool is None:
            raise ConnectionError("timescaledb not connected")
        try:
            rows = await self.pool.fetch(
                "SELECT (extract(epoch FROM ts) * 1000000)::bigint * 1000 AS ts, open, high, "
                f"low, close, volume, trades, vwap, flags FROM {self.schema}.bars AS b "
                # b.ts, not the output column `ts`: the index then yields the newest rows
                "WHERE venue = $1 AND symbol = $2 AND timeframe = $3 ORDER BY b.ts DESC LIMIT $4",
                venue,
                symbol,
                tf,
                limit,
            )
        except asyncpg.UndefinedTableError:
            return []
        return [dict(r) for r in reversed(rows)]  # the columns are the served fields

    # ---- venue REST ----------------------------------------------------------------------
    def rest_available(self, venue: str, tf: str) -> bool:
        """A venue with a REST minute-bar history (streams.venues.backfill.HISTORY)."""

        return venue in HISTORY and tf == "1m"

    async def _from_rest(
        self, venue: str, req: BarsRequest, tiers: dict[str, str]
    ) -> list[dict[str, Any]]:
        """The venue's bars of the `limit` periods before the current one, oldest first.
        Sets `tiers["rest"]` to unavailable, disabled or error, or to miss (the caller
        decides hit)."""
        if not self.rest_available(venue, req.timeframe):
            tiers["rest"] = "unavailable"
            return []
        if not self.allow_rest:
            tiers["rest"] = "disabled"
            return []
        period_ms = TIMEFRAMES[req.timeframe] * 1000
        last = (time.time_ns() // 1_000_000 // period_ms - 1) * period_ms
        first = last - (req.limit - 1) * period_ms
        try:
            source = self._history_source(venue)
            # One deadline for the whole fetch, retries and pacing included.
            async with asyncio.timeout(self.settings.read_rest_timeout_s):
                got = await source.fetch(req.symbol, first, last)
        except Exception as exc:  # includes a venue without credentials (OANDA's token)
            tiers["rest"] = "error"
            log.warning("read path: venue REST failed", venue=venue, error=repr(exc))
            return []
        tiers["rest"] = "miss"
        return [
            _bar({**{k: getattr(b, k) for k in FIELDS[:-1]}, "ts": b.ms * 1_000_000, "flags": 0})
            for b in sorted(got, key=lambda b: b.ms)
        ]

    def _history_source(self, venue: str) -> HistorySource:
        """One source per venue for the reader's life: its pacing spans requests."""

        if venue not in self._history:
            if self._session is None:
                # No aiohttp timeout of its own: the fetch's deadline (`_from_rest`) is the
                # only one. aiohttp turns a cancellation that meets its own expired timer into
                # a TimeoutError, which the history client retries: with both set to the same
                # value, a silent venue held a read for all its retries (20 s, not 3).
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout())
            self._history[venue] = HISTORY[venue](self.settings, self._session)
        return self._history[venue]

    async def _store_back(
        self,
        venue: str,
        req: BarsRequest,
        new: list[dict[str, Any]],
        not_in_redis: list[dict[str, Any]],
    ) -> int:
        """Store the venue's `new` bars in TimescaleDB (a bar already there is kept) and put
        the answer's bars Redis lacked into Redis, as the sink does; returns bars stored.
        A failure is logged: the answer is served anyway and the next read asks again."""

        stored = 0
        try:
            if self._writer_pool is None:
                self._writer_pool = await writer_pool(
                    self.settings, min_size=1, max_size=1, timeout=5
                )
            if not self._schema_ready:
                writer = TimescaleWriter(self.settings)
                writer.pool = self._writer_pool  # the DDL on our pool; never started itself
                await writer.ensure_schema()
                self._schema_ready = True
            minute_bars = [
                MinuteBar(
                    ms=b["ts"] // 1_000_000,
                    **{k: b[k] for k in FIELDS[:6]},
                    vwap=math.nan if b["vwap"] is None else b["vwap"],
                )
                for b in new
            ]
            async with self._writer_pool.acquire() as conn:
                stored = await insert_missing_bars(
                    conn, self.schema, venue, req.symbol, minute_bars
                )
        except Exception as exc:
            log.warning("read path: venue bars not stored in timescaledb", error=repr(exc))
        try:
            if not_in_redis:
                await self.redis.write(
                    [_bars_batch(venue, req.symbol, req.timeframe, not_in_redis)]
                )
        except Exception as exc:
            log.warning("read path: bars not stored in redis", error=repr(exc))
        log.info(
            "read path: venue bars", venue=venue, symbol=req.symbol, new=len(new), stored=stored
        )
        return stored


async def http_bars(reader: BarReader, query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """The `/bars` route: (HTTP status, JSON document). 400 bad request, 404 nothing known."""
    try:
        req = BarsRequest.from_query(query, max_limit=reader.settings.read_max_limit)
        result = await reader.read(req)
    except BadRequestError as exc:
        return 400, {"error": str(exc)}
    except NotFoundError as exc:
        return 404, {"error": str(exc)}
    doc = result.as_dict()
    return (200 if result.bars or result.forming else 404), doc
