"""Redis writer: latest state per instrument, coalesced per write, never per tick.

Keys (prefix `md:` live, `<namespace>:md:` in a namespace):
  {p}trade:{venue}:{symbol}          hash, the latest trade            (TTL redis_trade_ttl_s)
  {p}quote:{venue}:{symbol}          hash, the latest quote            (same TTL)
  {p}bars:{tf}:{venue}:{symbol}      sorted set, score = bar open ns, member = bar JSON,
                                     the last `redis_bars_keep` bars (TTL tied to the timeframe)
  {p}instruments                     set of venue:symbol seen
Every command is idempotent, so a redelivered write leaves the same state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from schemas.batch import MarketEventBatch
from schemas.events import TIMEFRAMES, Kind
from streams.sinks.base import RedisClientWriter


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


class RedisWriter(RedisClientWriter):
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
        assert self.client is not None, "start() first"
        p = self.prefix
        ttl = self.settings.redis_trade_ttl_s
        pipe = self.client.pipeline(transaction=False)
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
