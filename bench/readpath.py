"""Benchmark of the bar read path (streams.query.bars): latency of a Redis hit and of a
TimescaleDB read, `limit` bars per request, against the running dev services.

    python -m bench.readpath --limit 500 --requests 400 --repeat 5 --json

A fresh namespace is seeded through the real sink writers: instrument A's bars are in both
stores (its reads are Redis hits), instrument B's only in TimescaleDB (its reads are a Redis
miss, then a TimescaleDB hit: the real fall-through, both round trips timed). TimescaleDB
holds `--history` bars per instrument, so the newest-`limit` query runs on a real index.
One request = `BarReader.read` + `as_dict()` + `orjson.dumps`, i.e. what the `/bars` route
does short of HTTP, on one long-lived reader (pools warm), sequentially. Each scenario gets
`--warmup` untimed requests, then `--repeat` runs of `--requests`; p50/p99 are taken per run
and the median run is reported. The namespace is dropped afterwards. Logs go to stderr;
`--json` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from typing import Any

import asyncpg
import numpy as np
import orjson
import redis.asyncio as aioredis

from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.ops.logs import configure_logging
from streams.query.bars import BarReader, BarsRequest
from streams.settings import Settings
from streams.sinks.redis import RedisWriter
from streams.sinks.timescale import TimescaleWriter

MINUTE_NS = 60 * 1_000_000_000
T0_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00Z


def seed_batch(venue: str, symbol: str, n: int, seed: int) -> MarketEventBatch:
    """n closed 1m bars of a random walk."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    spread = np.abs(rng.normal(0, 2e-4, n)) * close
    return MarketEventBatch.from_columns(
        Kind.BAR,
        venue,
        symbol,
        {
            "ts_event": T0_NS + np.arange(n, dtype=np.int64) * MINUTE_NS,
            "ts_recv": np.full(n, T0_NS, dtype=np.int64),
            "open": close - spread / 2,
            "high": close + spread,
            "low": close - spread,
            "close": close,
            "volume": rng.uniform(1, 10, n),
            "trades": rng.integers(1, 500, n),
            "vwap": close,
            "flags": np.zeros(n, dtype=np.int64),
        },
        timeframe="1m",
    )


async def seed(settings: Settings, history: int) -> None:
    a = seed_batch("binance", "AAA-USDT", history, 1)
    b = seed_batch("binance", "BBB-USDT", history, 2)
    ts = TimescaleWriter(settings)
    rd = RedisWriter(settings)
    await ts.start()
    await rd.start()
    try:
        await ts.write([a, b])
        await rd.write([a])  # the sink keeps the newest redis_bars_keep
    finally:
        await ts.close()
        await rd.close()


async def scenario(
    reader: BarReader, req: BarsRequest, *, source: str, requests: int, warmup: int, repeat: int
) -> dict[str, Any]:
    async def one() -> float:
        started = time.perf_counter()
        result = await reader.read(req)
        orjson.dumps(result.as_dict())
        elapsed = time.perf_counter() - started
        if result.source != source or len(result.bars) != req.limit:
            raise RuntimeError(f"expected {req.limit} bars from {source}, got {result.tiers}")
        return elapsed

    for _ in range(warmup):
        await one()
    runs = []
    for _ in range(repeat):
        lat = np.array([await one() for _ in range(requests)]) * 1000
        runs.append(
            {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}
        )
    p50 = statistics.median(r["p50_ms"] for r in runs)
    p99 = statistics.median(r["p99_ms"] for r in runs)
    return {
        "source": source,
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "requests_per_s_at_p50": round(1000 / p50),
        "runs": runs,
    }


async def drop(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.dsn_with_password())
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {settings.pg_schema} CASCADE")
    finally:
        await conn.close()
    client = aioredis.from_url(settings.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env(namespace=f"benchrp{int(time.time())}")
    await seed(settings, args.history)
    try:
        async with BarReader(settings) as reader:
            kw = {"requests": args.requests, "warmup": args.warmup, "repeat": args.repeat}
            redis_hit = await scenario(
                reader, BarsRequest("AAA-USDT", "binance", "1m", args.limit), source="redis", **kw
            )
            timescale = await scenario(
                reader,
                BarsRequest("BBB-USDT", "binance", "1m", args.limit),
                source="timescaledb",
                **kw,
            )
    finally:
        await drop(settings)
    return {
        "benchmark": "readpath",
        "limit": args.limit,
        "history_bars": args.history,
        "requests": args.requests,
        "repeat": args.repeat,
        "redis_hit": redis_hit,
        "redis_miss_timescaledb_hit": timescale,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readpath", description=__doc__)
    parser.add_argument("--limit", type=int, default=500, help="bars per request")
    parser.add_argument("--history", type=int, default=10_000, help="bars per instrument in PG")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per run")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if not 1 <= args.limit <= 500 or args.history < args.limit:
        parser.error("--limit must be 1..500 (Redis keeps 500) and --history at least --limit")
    configure_logging("warning", "auto")
    doc = asyncio.run(run(args))
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for name in ("redis_hit", "redis_miss_timescaledb_hit"):
            r = doc[name]
            sys.stdout.write(f"{name}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
