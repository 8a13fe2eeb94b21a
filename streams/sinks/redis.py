"""Redis writer: latest state per instrument, coalesced per write, never per tick.

Keys (prefix `md:` live, `<namespace>:md:` in a namespace):
  {p}trade:{venue}:{symbol}          hash, the latest trade            (TTL redis_trade_ttl_s)
  {p}quote:{venue}:{symbol}          hash, the latest quote            (same TTL)
  {p}bars:{tf}:{venue}:{symbol}      sorted set, score = bar open ns, member = bar JSON,
                                     the last `redis_bars_keep` bars (TTL tied to the timeframe)
  {p}instruments                     set of venue:symbol seen
  {p}forming:1m:{venue}:{symbol}     string, JSON array of the instrument's forming 1m bars
                                     (members as in `bars:`), replaced whole per write, deleted
                                     when none is forming (TTL redis_forming_ttl_s)
  {p}stats:readpath                  hash, read-path hit/miss counts (streams.query.bars)
Every command is idempotent, so a redelivered write leaves the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import structlog

from kernels.bars import Bar, bars_to_columns
from schemas.batch import MarketEventBatch
from schemas.events import TIMEFRAMES, Kind
from streams.ops.metrics import FORMING_WRITE_ERRORS
from streams.settings import Settings
from streams.sinks.base import RedisClientWriter

log = structlog.get_logger(__name__)


def bar_member(batch: MarketEventBatch, i: int) -> bytes:
    c = batch.cols
    vwap = float(c["vwap"][i])
    return orjson.dumps(
        {
            "ts": int(c["ts_event"][i]),
            "open": float(c["open"][i]),
            "high": float(c["high"][i]),
            "low": float(c["low"][i]),
            "close": float(c["close"][i]),
            "volume": float(c["volume"][i]),
            "trades": int(c["trades"][i]),
            "vwap": vwap if np.isfinite(vwap) else None,
            "flags": int(c["flags"][i]),
        }
    )


class RedisWriter(RedisClientWriter[MarketEventBatch]):
    """Ticks' and quotes' latest state and closed bars (md.events.v1, md.bars.v1)."""

    async def write(self, batches: Iterable[MarketEventBatch]) -> dict[str, int]:
        latest: dict[tuple[Kind, str], tuple[int, MarketEventBatch, int]] = {}
        bars: list[MarketEventBatch] = []
        for b in batches:
            if b.kind in (Kind.TRADE, Kind.QUOTE):
                i = int(np.argmax(b.cols["ts_event"]))
                ts = int(b.cols["ts_event"][i])
                prev = latest.get((b.kind, b.key))
                if prev is None or ts >= prev[0]:
                    latest[(b.kind, b.key)] = (ts, b, i)
            elif b.kind is Kind.BAR:
                bars.append(b)
        if not latest and not bars:
            return {}
        p = self.prefix
        ttl = self.settings.redis_trade_ttl_s
        pipe = self.pipeline()
        instruments: set[str] = set()
        for (kind, key), (_, b, i) in latest.items():
            name = f"{p}{kind.value}:{key}"
            fields: dict[Any, Any] = {k: col[i].item() for k, col in b.cols.items()}
            pipe.hset(name, mapping=fields)
            pipe.expire(name, ttl)
            instruments.add(key)
        for b in bars:
            tf = b.timeframe or "1m"
            name = f"{p}bars:{tf}:{b.key}"
            for i, start in enumerate(b.cols["ts_event"].tolist()):
                pipe.zremrangebyscore(name, start, start)  # a correction replaces its bar
                pipe.zadd(name, {bar_member(b, i): start})
            pipe.zremrangebyrank(name, 0, -(self.settings.redis_bars_keep + 1))
            pipe.expire(name, TIMEFRAMES.get(tf, 60) * self.settings.redis_bar_ttl_periods)
            instruments.add(b.key)
        pipe.sadd(f"{p}instruments", *instruments)
        await pipe.execute()
        return {"latest": len(latest), "bars": sum(len(b) for b in bars)}


def forming_key(prefix: str, venue: str, symbol: str, timeframe: str = "1m") -> str:
    return f"{prefix}forming:{timeframe}:{venue}:{symbol}"


def forming_value(venue: str, symbol: str, bars: list[Bar]) -> bytes:
    """The forming bars as one JSON array of `bar_member` documents, oldest first."""
    ordered = sorted(bars, key=lambda b: b.start)
    cols = bars_to_columns(ordered)
    cols["ts_recv"] = cols["ts_event"]
    batch = MarketEventBatch.from_columns(Kind.BAR, venue, symbol, cols, timeframe="1m")
    return b"[" + b",".join(bar_member(batch, i) for i in range(len(batch))) + b"]"


# One instrument's forming 1m bars: ((venue, symbol), bars); no bars deletes its key.
Forming = tuple[tuple[str, str], list[Bar]]


class FormingBarWriter(RedisClientWriter[Forming]):
    """Forming 1m bars to Redis, coalesced: the bars agent hands over each instrument's
    forming bars after every record it applied (`update`, which never waits on Redis), and
    one background task writes whatever changed since its last write in one pipeline — so
    at most one write per instrument per round however many records or ticks arrived.

    A forming bar is a cache of state whose durable home is the bar-builder's changelog;
    it is never acknowledged, so a failed write is counted, logged and retried with the
    newest state, and losing it (TTL, crash) loses nothing the stream will not rewrite.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._dirty: dict[tuple[str, str], list[Bar]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def update(self, venue: str, symbol: str, bars: Iterable[Bar]) -> None:
        """Remember the instrument's forming bars now (copied); none forming deletes the key."""
        self._dirty[(venue, symbol)] = [replace(b) for b in bars]
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="forming-bars-redis"
            )

    async def flush(self) -> None:
        """Wait until every update handed over so far is written."""
        await self._idle.wait()

    async def close(self) -> None:
        if self._task is not None:
            if self._dirty:
                try:
                    await asyncio.wait_for(self.flush(), timeout=2.0)
                except TimeoutError:
                    log.warning("forming bars unwritten at shutdown", instruments=len(self._dirty))
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await super().close()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            taken, self._dirty = self._dirty, {}
            try:
                await self.start()
                await self.write(taken.items())
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                FORMING_WRITE_ERRORS.inc()
                log.warning("forming bars write failed", error=repr(exc), retry_in_s=delay)
                for key, bars in taken.items():
                    self._dirty.setdefault(key, bars)  # a newer update wins
                await asyncio.sleep(delay)
                delay = min(self.settings.sink_retry_max_s, delay * 2)
                self._wake.set()
                continue
            if not self._dirty:
                self._idle.set()

    async def write(self, forming: Iterable[Forming]) -> dict[str, int]:
        """Each instrument's forming bars as one value, in one pipeline."""
        ttl = self.settings.redis_forming_ttl_s
        pipe = self.pipeline()
        written = 0
        for (venue, symbol), bars in forming:
            name = forming_key(self.prefix, venue, symbol)
            if bars:
                pipe.set(name, forming_value(venue, symbol, bars), ex=ttl)
            else:
                pipe.delete(name)
            written += 1
        await pipe.execute()
        return {"forming": written}


def read_stats_key(prefix: str) -> str:
    """Hash of read-path counters, fields `{tier}:{result}` (see streams.query.bars)."""
    return f"{prefix}stats:readpath"
