"""Late ticks through a real worker: within the grace period a tick joins its bar (not a
correction); after the bar closed it corrects the stored bar (flag 2, OHLCV re-merged by
kernels.bars rules) in TimescaleDB and Redis, never silently dropped. On the way, the
forming bars the agent writes to Redis are checked, and the read path serves the result.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from schemas.events import Kind
from streams.kafka.admin import ensure_topics
from streams.kafka.producer import BatchingProducer
from streams.query.bars import BarReader, BarsRequest
from streams.settings import Settings
from streams.sinks.redis import forming_key
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually

S = 1_000_000_000
MIN = 60 * S
VENUE, SYMBOL = "kraken", "ETH-EUR"


async def send(producer: BatchingProducer, ticks: list[tuple[int, float, float, int]]) -> None:
    """(ts, price, size, trade id) ticks as ONE record, delivered before returning."""
    await producer.add(
        Kind.TRADE,
        VENUE,
        SYMBOL,
        {
            "ts_event": [t[0] for t in ticks],
            "ts_recv": [time.time_ns()] * len(ticks),
            "price": [t[1] for t in ticks],
            "size": [t[2] for t in ticks],
            "side": [1] * len(ticks),
            "trade_id": [t[3] for t in ticks],
        },
    )
    await producer.flush()


async def stored_bar(pg: asyncpg.Connection, schema: str, start: int) -> dict[str, Any] | None:
    if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.bars"):
        return None
    row = await pg.fetchrow(
        f"SELECT open, high, low, close, volume, trades, vwap, flags FROM {schema}.bars "
        "WHERE venue = $1 AND symbol = $2 AND timeframe = '1m' "
        "AND ts = to_timestamp($3::float8)",
        VENUE,
        SYMBOL,
        start / S,
    )
    return dict(row) if row else None


async def redis_bar(rds: aioredis.Redis, prefix: str, start: int) -> dict[str, Any] | None:
    members = await rds.zrangebyscore(f"{prefix}bars:1m:{VENUE}:{SYMBOL}", start, start)
    return orjson.loads(members[0]) if len(members) == 1 else None  # type: ignore[arg-type]


def ohlcv(bar: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if bar is None:
        return None
    return tuple(bar[k] for k in ("open", "high", "low", "close", "volume", "trades", "flags"))


async def test_late_tick_within_grace_joins_the_bar_beyond_grace_corrects_it(
    settings: Settings, pg: asyncpg.Connection, rds: aioredis.Redis
) -> None:
    # 3 s grace: an idle instrument's bar closes 3 s of wall time after its newest tick, so
    # the within-grace tick (sent right after) certainly finds its bar still open.
    settings = Settings.from_env({}, **{**settings.__dict__, "bar_grace_ms": 3000})
    await ensure_topics(settings)
    schema, prefix = settings.pg_schema, settings.redis_prefix
    m = (time.time_ns() // MIN - 10) * MIN  # the minute under test, in event time
    worker = WorkerProcess(settings, ARTIFACTS / f"{settings.namespace}-late.log").start()
    try:
        async with BatchingProducer(settings, hot_topics(settings)["trades"]) as producer:
            first = [(m + 5 * S, 100.0, 1.0, 1), (m + 20 * S, 104.0, 2.0, 2)]
            first += [(m + 40 * S, 98.0, 1.0, 3), (m + 50 * S, 101.0, 0.5, 4)]
            await send(producer, first)
            # the next minute opens: watermark m + 61 s - 3 s, bar m stays open
            await send(producer, [(m + 61 * S, 102.0, 1.0, 5)])
            # late but within grace: event time inside bar m, a new high and the latest tick
            await send(producer, [(m + 55 * S, 106.0, 1.5, 6)])

            # forming bars in Redis: bar m with the within-grace tick, and bar m+1
            forming_name = forming_key(prefix, VENUE, SYMBOL)

            async def forming_both() -> list[dict[str, Any]] | None:
                raw = await rds.get(forming_name)
                got = orjson.loads(raw) if raw else []
                return (
                    got if [(b["ts"], b["trades"]) for b in got] == [(m, 5), (m + MIN, 1)] else None
                )

            forming = await eventually(forming_both, within=60, every=0.05)
            assert ohlcv(forming[0]) == (100.0, 106.0, 98.0, 106.0, 6.0, 5, 0)
            assert ohlcv(forming[1]) == (102.0, 102.0, 102.0, 102.0, 1.0, 1, 0)

            # bar m closes (3 s idle): final, with the within-grace tick, not a correction
            closed = (100.0, 106.0, 98.0, 106.0, 6.0, 5, 0)
            bar = await eventually(lambda: stored_bar(pg, schema, m), within=30)
            assert ohlcv(bar) == closed
            assert bar["vwap"] == (100 + 208 + 98 + 50.5 + 159) / 6
            assert ohlcv(await eventually(lambda: redis_bar(rds, prefix, m), within=10)) == closed

            # closing bar m took it out of the forming bars (the idle timer wrote that)
            async def forming_next() -> bool:
                raw = await rds.get(forming_name)
                return raw is not None and [b["ts"] for b in orjson.loads(raw)] == [m + MIN]

            await eventually(forming_next, within=10, every=0.05)

            # beyond grace: bar m is closed and stored; this tick is the earliest of the minute
            # (new open), a new low, not the latest (close stays): a correction of bar m
            await send(producer, [(m + 1 * S, 97.0, 2.0, 7)])
            corrected = (97.0, 106.0, 97.0, 106.0, 8.0, 6, 2)

            async def in_pg() -> dict[str, Any] | None:
                bar = await stored_bar(pg, schema, m)
                return bar if ohlcv(bar) == corrected else None

            async def in_redis() -> dict[str, Any] | None:
                bar = await redis_bar(rds, prefix, m)
                return bar if ohlcv(bar) == corrected else None

            bar = await eventually(in_pg, within=30)
            assert bar["vwap"] == (100 + 208 + 98 + 50.5 + 159 + 194) / 8
            await eventually(in_redis, within=10)
        # the correction replaced bar m, it added no row (bar m+1 is still forming)
        assert await pg.fetchval(f"SELECT count(*) FROM {schema}.bars WHERE timeframe = '1m'") == 1

        async with BarReader(settings) as reader:
            read = await reader.read(BarsRequest(SYMBOL, VENUE, "1m", 1, include_forming=True))
        assert (read.source, [b["ts"] for b in read.bars]) == ("redis", [m])
        assert ohlcv(read.bars[0]) == corrected
        assert [ohlcv(b) for b in read.forming] == [(102.0, 102.0, 102.0, 102.0, 1.0, 1, 0)]
        assert worker.running
    finally:
        worker.stop()
