"""Redis writer against real Redis: coalesced latest state, bounded bar history, TTLs."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis

from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.settings import Settings
from streams.sinks.redis import RedisWriter

MIN = 60_000_000_000


def _trades(ts: list[int], price: list[float]) -> MarketEventBatch:
    n = len(ts)
    return MarketEventBatch.from_columns(
        Kind.TRADE,
        "kraken",
        "BTC-EUR",
        {
            "ts_event": ts,
            "ts_recv": ts,
            "price": price,
            "size": [1.0] * n,
            "trade_id": list(range(n)),
        },
    )


def _bars(starts: list[int], close: float = 2.0, flags: int = 0) -> MarketEventBatch:
    n = len(starts)
    return MarketEventBatch.from_columns(
        Kind.BAR,
        "kraken",
        "BTC-EUR",
        {
            "ts_event": starts,
            "ts_recv": starts,
            "open": [1.0] * n,
            "high": [3.0] * n,
            "low": [0.5] * n,
            "close": [close] * n,
            "volume": [1.0] * n,
            "trades": [1] * n,
            "vwap": [1.5] * n,
            "flags": [flags] * n,
        },
        timeframe="1m",
    )


async def test_latest_trade_is_the_newest_across_batches(
    settings: Settings, rds: aioredis.Redis
) -> None:
    writer = RedisWriter(settings)
    await writer.start()
    try:
        # the second batch arrives later but is older in event time: it must not win
        await writer.write([_trades([30, 10], [3.0, 1.0]), _trades([20], [2.0])])
        key = f"{settings.redis_prefix}trade:kraken:BTC-EUR"
        latest = await rds.hgetall(key)
        assert latest[b"price"] == b"3.0" and latest[b"ts_event"] == b"30"
        assert 0 < await rds.ttl(key) <= settings.redis_trade_ttl_s
        assert await rds.smembers(f"{settings.redis_prefix}instruments") == {b"kraken:BTC-EUR"}
    finally:
        await writer.close()


async def test_bars_keep_the_last_n_and_corrections_replace(
    settings: Settings, rds: aioredis.Redis
) -> None:
    keep = 5
    writer = RedisWriter(Settings.from_env({}, **{**settings.__dict__, "redis_bars_keep": keep}))
    await writer.start()
    try:
        await writer.write([_bars([m * MIN for m in range(8)])])
        await writer.write(
            [_bars([7 * MIN], close=9.0, flags=2), _bars([7 * MIN], close=9.0, flags=2)]
        )
        key = f"{settings.redis_prefix}bars:1m:kraken:BTC-EUR"
        raw: Any = await rds.zrange(key, 0, -1, withscores=True)
        members: list[tuple[bytes, float]] = [(bytes(m), float(s)) for m, s in raw]
        assert [int(s) // MIN for _, s in members] == [3, 4, 5, 6, 7]
        last = orjson.loads(members[-1][0])
        assert last["close"] == 9.0 and last["flags"] == 2 and last["vwap"] == 1.5
        assert await rds.ttl(key) > 0
        assert np.isclose(orjson.loads(members[0][0])["close"], 2.0)
    finally:
        await writer.close()
