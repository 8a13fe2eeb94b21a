"""Read path on the real stores: Redis hit, Redis miss → TimescaleDB, both miss → a local
server speaking Binance's klines (stored back, then served without it), the hit/miss
counters (Prometheus and the Redis stats hash), HTTP `/bars` on a running worker and the
`sepstream bars` command."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from click.testing import CliRunner
from prometheus_client import REGISTRY

from kernels.bars import Bar
from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.cli import main
from streams.query.bars import BadRequestError, BarReader, BarsRequest, http_bars
from streams.settings import Settings
from streams.sinks.redis import FormingBarWriter, RedisWriter, forming_key, read_stats_key
from streams.sinks.timescale import TimescaleWriter
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually, free_port
from tests.worker_web import worker_web

MIN = 60_000_000_000
T0 = 1_700_000_040 * 10**9 // MIN * MIN  # a whole minute in 2023


def bars_batch(venue: str, symbol: str, starts: list[int], base: float) -> MarketEventBatch:
    """Closed 1m bars whose values follow from their index (close = base + i)."""
    n = len(starts)
    return MarketEventBatch.from_columns(
        Kind.BAR,
        venue,
        symbol,
        {
            "ts_event": starts,
            "ts_recv": starts,
            "open": [base + i - 0.5 for i in range(n)],
            "high": [base + i + 1 for i in range(n)],
            "low": [base + i - 1 for i in range(n)],
            "close": [base + i for i in range(n)],
            "volume": [2.0 + i for i in range(n)],
            "trades": [3 + i for i in range(n)],
            "vwap": [base + i + 0.25 for i in range(n)],
            "flags": [0] * n,
        },
        timeframe="1m",
    )


def expected(batch: MarketEventBatch) -> list[dict[str, Any]]:
    c = batch.cols
    return [
        {
            "ts": int(c["ts_event"][i]),
            **{k: float(c[k][i]) for k in ("open", "high", "low", "close", "volume")},
            "trades": int(c["trades"][i]),
            "vwap": float(c["vwap"][i]),
            "flags": 0,
        }
        for i in range(len(batch))
    ]


async def store(settings: Settings, batch: MarketEventBatch, *, pg: bool, rds: bool) -> None:
    """Through the real sink writers, as the worker stores bars."""
    writers: list[Any] = ([TimescaleWriter(settings)] if pg else []) + (
        [RedisWriter(settings)] if rds else []
    )
    for w in writers:
        await w.start()
        try:
            await w.write([batch])
        finally:
            await w.close()


def counted(tier: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "sepstream_read_requests_total", {"tier": tier, "result": result}
    )
    return value or 0.0


def counts() -> dict[tuple[str, str], float]:
    return {
        (t, r): counted(t, r)
        for t in ("redis", "timescaledb", "rest")
        for r in ("hit", "miss", "error")
    }


def moved(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {k: v - before[k] for k, v in counts().items() if v != before[k]}


async def stats(rds: aioredis.Redis, settings: Settings) -> dict[str, int]:
    raw = await rds.hgetall(read_stats_key(settings.redis_prefix))
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


@pytest.fixture
async def reader(settings: Settings) -> AsyncIterator[BarReader]:
    async with BarReader(settings) as r:
        yield r


def strip(doc_bars: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in b.items() if k not in ("time", "forming")} for b in doc_bars]


async def test_redis_hit_serves_the_newest_bars_from_redis_alone(
    settings: Settings, rds: aioredis.Redis, pg: asyncpg.Connection, reader: BarReader
) -> None:
    seeded = bars_batch("kraken", "BTC-EUR", [T0 + i * MIN for i in range(40)], 100.0)
    await store(settings, seeded, pg=False, rds=True)  # only Redis has them: a hit proves it
    before = counts()
    result = await reader.read(BarsRequest("BTC-EUR", "kraken", "1m", 25))
    assert (result.source, result.tiers) == ("redis", {"redis": "hit"})
    assert result.bars == expected(seeded)[-25:]
    assert moved(before) == {("redis", "hit"): 1}
    assert await stats(rds, settings) == {"requests": 1, "redis:hit": 1}

    doc = result.as_dict()
    assert doc["count"] == 25 and strip(doc["bars"]) == expected(seeded)[-25:]
    assert doc["bars"][0]["time"] == "2023-11-14T22:29:00+00:00"
    assert doc["bars"][0]["ts"] == T0 + 15 * MIN

    # the venue is found from the instruments Redis knows when not given
    again = await reader.read(BarsRequest.parse("btc-eur", None, "1m", 40, False, max_limit=500))
    assert (again.venue, again.source, again.bars) == ("kraken", "redis", expected(seeded))


async def test_redis_miss_falls_through_to_timescaledb(
    settings: Settings, rds: aioredis.Redis, pg: asyncpg.Connection, reader: BarReader
) -> None:
    seeded = bars_batch("kraken", "ETH-EUR", [T0 + i * MIN for i in range(60)], 50.0)
    await store(settings, seeded, pg=True, rds=False)
    await store(settings, seeded.select(np.arange(50, 60)), pg=False, rds=True)
    before = counts()
    result = await reader.read(BarsRequest("ETH-EUR", "kraken", "1m", 30))
    assert result.source == "timescaledb"
    assert result.tiers == {"redis": "miss", "timescaledb": "hit"}
    assert result.bars == expected(seeded)[-30:]
    # 10 bars are a Redis hit
    small = await reader.read(BarsRequest("ETH-EUR", "kraken", "1m", 10))
    assert (small.source, small.bars) == ("redis", expected(seeded)[-10:])
    # more than either store has, no REST tier for kraken: all there is, marked partial
    big = await reader.read(BarsRequest("ETH-EUR", "kraken", "1m", 100))
    assert big.source == "partial"
    assert big.tiers == {"redis": "miss", "timescaledb": "miss", "rest": "unavailable"}
    assert big.bars == expected(seeded)
    assert moved(before) == {
        ("redis", "miss"): 2,
        ("redis", "hit"): 1,
        ("timescaledb", "hit"): 1,
        ("timescaledb", "miss"): 1,
    }
    assert await stats(rds, settings) == {
        "requests": 3,
        "redis:hit": 1,
        "redis:miss": 2,
        "timescaledb:hit": 1,
        "timescaledb:miss": 1,
    }


def kline(ms: int) -> list[Any]:
    """Binance's kline array for the minute opening at `ms`; values follow from the minute."""
    m = ms // 60_000 % 1000
    close = 1000.0 + m
    return [
        ms, f"{close - 0.5:.8f}", f"{close + 2:.8f}", f"{close - 2:.8f}", f"{close:.8f}",
        "4.00000000", ms + 59_999, f"{4 * close + 2:.8f}", 10 + m, "1.0", "100.0", "0",
    ]  # fmt: skip


def kline_bar(ms: int) -> dict[str, Any]:
    close = 1000.0 + ms // 60_000 % 1000
    return {
        "ts": ms * 1_000_000,
        "open": close - 0.5,
        "high": close + 2,
        "low": close - 2,
        "close": close,
        "volume": 4.0,
        "trades": 10 + ms // 60_000 % 1000,
        "vwap": (4 * close + 2) / 4,
        "flags": 0,
    }


class Klines:
    """`GET /api/v3/klines` with a kline for every minute asked for."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.requests.append(q)
        assert (q["symbol"], q["interval"]) == ("BTCUSDT", "1m")
        first, last, limit = int(q["startTime"]), int(q["endTime"]), int(q["limit"])
        start = -(-first // 60_000) * 60_000
        rows = [kline(ms) for ms in range(start, last + 1, 60_000)][:limit]
        return web.json_response(rows)


@pytest.fixture
async def klines() -> AsyncIterator[tuple[Klines, str]]:
    server = Klines()
    app = web.Application()
    app.add_routes([web.get("/api/v3/klines", server.handle)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield server, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_both_miss_fetches_from_the_venue_and_stores_back(
    settings: Settings,
    rds: aioredis.Redis,
    pg: asyncpg.Connection,
    klines: tuple[Klines, str],
) -> None:
    server, url = klines
    settings = settings.replace(binance_rest_url=url, backfill_requests_per_s=50.0)
    # Five bars the stream stored a few minutes ago (close 999 < any venue close): they win.
    now_min = time.time_ns() // MIN * MIN
    mine = bars_batch("binance", "BTC-USDT", [now_min - k * MIN for k in (9, 8, 7, 6, 5)], 7.0)
    await store(settings, mine, pg=True, rds=False)
    before = counts()
    async with BarReader(settings) as reader:
        result = await reader.read(BarsRequest.parse("BTCUSDT", "binance", "1m", 30, False,
                                                     max_limit=1000))  # fmt: skip
        (asked,) = server.requests
        first, last = int(asked["startTime"]), int(asked["endTime"]) // 60_000 * 60_000
        assert last - first == 29 * 60_000
        ours = {b["ts"]: b for b in expected(mine)}
        want = [ours.get(ms * 1_000_000) or kline_bar(ms) for ms in range(first, last + 1, 60_000)]
        assert (result.symbol, result.source) == ("BTC-USDT", "rest")
        assert result.tiers == {"redis": "miss", "timescaledb": "miss", "rest": "hit"}
        assert result.bars == want
        assert result.stored_back == 25

        # stored back: TimescaleDB now holds all 30, the stream's five untouched
        rows = await pg.fetch(
            f"SELECT (extract(epoch FROM ts) * 1000000)::bigint * 1000 AS ts, open, high, low, "
            f"close, volume, trades, vwap, flags FROM {settings.pg_schema}.bars "
            "WHERE venue = 'binance' AND symbol = 'BTC-USDT' AND timeframe = '1m' ORDER BY ts"
        )
        assert [dict(r) for r in rows] == want
        # ... and Redis all 30 (the five the cache lacked too), as the sink writes them
        members = await rds.zrange(f"{settings.redis_prefix}bars:1m:binance:BTC-USDT", 0, -1)
        assert [orjson.loads(m) for m in members] == want  # type: ignore[arg-type]

        second = await reader.read(BarsRequest("BTC-USDT", "binance", "1m", 30))
    assert len(server.requests) == 1  # the second read did not ask the venue
    assert (second.source, second.tiers, second.bars) == ("redis", {"redis": "hit"}, want)
    assert moved(before) == {
        ("redis", "miss"): 1,
        ("timescaledb", "miss"): 1,
        ("rest", "hit"): 1,
        ("redis", "hit"): 1,
    }
    assert await stats(rds, settings) == {
        "requests": 2,
        "redis:miss": 1,
        "timescaledb:miss": 1,
        "rest:hit": 1,
        "redis:hit": 1,
    }


async def test_anonymous_http_requests_do_not_call_the_venue_unless_enabled(
    settings: Settings,
    rds: aioredis.Redis,
    pg: asyncpg.Connection,
    klines: tuple[Klines, str],
) -> None:
    """`GET /bars` on the worker's routes: by default the venue REST tier is `disabled` and
    the venue never hears of the request; SEPSTREAM_READ_HTTP_REST=true lets it through."""
    server, url = klines
    settings = settings.replace(binance_rest_url=url, backfill_requests_per_s=50.0)
    assert settings.read_http_rest is False  # the default
    query = "/bars?symbol=BTC-USDT&venue=binance&tf=1m&limit=30"
    async with worker_web(settings) as client:
        resp = await client.get(query)
        doc = orjson.loads(await resp.read())
    assert resp.status == 404
    assert doc["tiers"] == {"redis": "miss", "timescaledb": "miss", "rest": "disabled"}
    assert (doc["source"], doc["count"], doc["stored_back"]) == ("none", 0, 0)
    assert server.requests == []
    assert await stats(rds, settings) == {"requests": 1, "redis:miss": 1, "timescaledb:miss": 1}

    async with worker_web(settings.replace(read_http_rest=True)) as client:
        resp = await client.get(query)
        doc = orjson.loads(await resp.read())
    assert resp.status == 200
    assert (doc["source"], doc["count"], doc["stored_back"]) == ("rest", 30, 30)
    assert len(server.requests) == 1


async def test_the_bars_command_still_fetches_from_the_venue(
    settings: Settings,
    rds: aioredis.Redis,
    pg: asyncpg.Connection,
    klines: tuple[Klines, str],
) -> None:
    """An operator's `sepstream bars` keeps the REST tier whatever READ_HTTP_REST says."""
    server, url = klines
    env = settings.replace(binance_rest_url=url, backfill_requests_per_s=50.0).to_env()
    args = ["bars", "BTC-USDT", "--venue", "binance", "--limit", "12", "--json"]
    res = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
    assert res.exit_code == 0, res.output
    doc = orjson.loads(res.stdout)
    assert (doc["source"], doc["count"], doc["tiers"]["rest"]) == ("rest", 12, "hit")
    assert len(server.requests) == 1


async def test_a_venue_that_does_not_answer_is_given_up_after_the_timeout(
    settings: Settings, rds: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    """A venue that accepts the connection and never answers (what an offline or stuck
    network looks like) holds a read for `read_rest_timeout_s`, a few seconds by default."""
    assert Settings.from_env({}).read_rest_timeout_s <= 5.0
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # until the client gives up and closes

    venue = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = venue.sockets[0].getsockname()[1]
    timeout = 0.8
    settings = settings.replace(
        binance_rest_url=f"http://127.0.0.1:{port}", read_rest_timeout_s=timeout
    )
    try:
        async with BarReader(settings) as reader:  # the CLI's reader: REST allowed
            began = time.perf_counter()
            result = await reader.read(BarsRequest("BTC-USDT", "binance", "1m", 30))
            took = time.perf_counter() - began
    finally:
        venue.close()
        for w in accepted:
            w.close()
        await venue.wait_closed()
    assert accepted, "the venue was never asked"
    assert result.tiers == {"redis": "miss", "timescaledb": "miss", "rest": "error"}
    assert (result.source, result.bars) == ("none", [])
    assert timeout <= took < timeout + 1.5


async def test_http_bars_on_a_running_worker(
    settings: Settings, rds: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    seeded = bars_batch("kraken", "XRP-EUR", [T0 + i * MIN for i in range(12)], 0.5)
    await store(settings, seeded, pg=True, rds=True)
    forming = [{**expected(seeded)[-1], "ts": T0 + 12 * MIN, "trades": 1}]
    await rds.set(forming_key(settings.redis_prefix, "kraken", "XRP-EUR"), orjson.dumps(forming))
    worker = WorkerProcess(settings, ARTIFACTS / f"{settings.namespace}-readpath.log").start()
    base = f"http://{settings.web_host}:{settings.web_port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(up, within=60, every=0.25)

            async def get(query: str) -> tuple[int, dict[str, Any]]:
                async with http.get(f"{base}/bars?{query}") as resp:
                    assert resp.content_type == "application/json"
                    return resp.status, orjson.loads(await resp.read())

            status, doc = await get("symbol=XRP-EUR&venue=kraken&tf=1m&limit=10&forming=1")
            assert status == 200
            assert (doc["source"], doc["tiers"], doc["count"]) == ("redis", {"redis": "hit"}, 10)
            assert strip(doc["bars"]) == expected(seeded)[-10:] + forming
            assert [b["forming"] for b in doc["bars"]] == [False] * 10 + [True]

            status, doc = await get("symbol=XRP-EUR&venue=kraken&limit=20")
            assert status == 200
            assert doc["tiers"] == {"redis": "miss", "timescaledb": "miss", "rest": "unavailable"}
            assert strip(doc["bars"]) == expected(seeded)
            assert (await get("symbol=XRP-EUR&tf=2m"))[0] == 400
            assert (await get("symbol=XRP-EUR&limit=0"))[1] == {
                "error": f"limit 0 out of range: 1..{settings.read_max_limit}"
            }
            assert (await get("symbol=XRP-EUR&limit=ten"))[0] == 400
            assert (await get("venue=kraken"))[0] == 400
            assert (await get("symbol=DOGE-EUR"))[0] == 404
            assert (await get("symbol=DOGE-EUR&venue=kraken"))[0] == 404

            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            assert 'sepstream_read_requests_total{result="hit",tier="redis"} 1.0' in text
            assert 'sepstream_read_requests_total{result="miss",tier="redis"} 2.0' in text
        assert await stats(rds, settings) == {
            "requests": 3,
            "redis:hit": 1,
            "redis:miss": 2,
            "timescaledb:miss": 2,
        }
        assert worker.running
    finally:
        worker.stop()


def test_bars_command(settings: Settings) -> None:
    seeded = bars_batch("coinbase", "SOL-USD", [T0 + i * MIN for i in range(8)], 20.0)
    asyncio.run(store(settings, seeded, pg=True, rds=True))
    env = settings.to_env()
    runner = CliRunner()
    try:
        res = runner.invoke(main, ["bars", "SOL-USD", "--limit", "5", "--json"], env=env)
        assert res.exit_code == 0, res.output
        doc = orjson.loads(res.stdout)
        assert (doc["venue"], doc["source"], doc["count"]) == ("coinbase", "redis", 5)
        assert strip(doc["bars"]) == expected(seeded)[-5:]

        table = runner.invoke(main, ["bars", "SOL-USD", "--venue", "coinbase", "--limit", "3"],
                              env=env, terminal_width=200)  # fmt: skip
        assert table.exit_code == 0, table.output
        assert "coinbase SOL-USD 1m — 3 bars from redis (redis hit)" in table.stdout
        last_row = table.stdout.splitlines()[-2]
        cells = [c.strip() for c in last_row.split("│")[1:-1]]
        assert cells == ["2023-11-14 22:21", "26.5", "28", "26", "27", "9", "10", "27.25", ""]

        for args in (["--tf", "7m"], ["--limit", "0"], ["--limit", "x"], ["--include-forming",
                     "--tf", "5m"]):  # fmt: skip
            bad = runner.invoke(main, ["bars", "SOL-USD", *args, "--json"], env=env)
            assert bad.exit_code == 2, (args, bad.output)
            assert bad.stdout == ""
        none = runner.invoke(main, ["bars", "ADA-USD", "--venue", "coinbase", "--json"], env=env)
        assert none.exit_code == 1 and orjson.loads(none.stdout)["bars"] == []
    finally:
        asyncio.run(_drop(settings))


async def _drop(settings: Settings) -> None:
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


async def test_bad_requests_are_rejected_before_any_store_is_asked(settings: Settings) -> None:
    async with BarReader(settings) as reader:
        for query in ({"symbol": "BTC-USDT", "tf": "3m"}, {"symbol": "???"}, {"symbol": ""}):
            status, doc = await http_bars(reader, query)
            assert status == 400 and doc["error"], query
    with pytest.raises(BadRequestError, match="out of range"):
        BarsRequest.parse("BTC-USDT", None, "1m", 5001, False, max_limit=5000)


def forming_bar(start: int, close: float, trades: int) -> Bar:
    return Bar(start, close - 1, close + 1, close - 2, close, 1.0, trades, close, start, start)


async def test_forming_bars_are_coalesced_replaced_and_deleted(
    settings: Settings, rds: aioredis.Redis
) -> None:
    writer = FormingBarWriter(settings)
    name = forming_key(settings.redis_prefix, "kraken", "BTC-EUR")
    try:
        for trades in range(1, 201):  # handed over without waiting: one write takes the newest
            bar = forming_bar(T0 + MIN, 10.0 + trades, trades)
            writer.update("kraken", "BTC-EUR", [bar, forming_bar(T0, 9.0, 3)])
        await writer.flush()
        doc = orjson.loads(await rds.get(name) or b"null")
        assert [(b["ts"], b["close"], b["trades"]) for b in doc] == [
            (T0, 9.0, 3),
            (T0 + MIN, 210.0, 200),
        ]
        assert doc[1] == {
            "ts": T0 + MIN, "open": 209.0, "high": 211.0, "low": 208.0, "close": 210.0,
            "volume": 1.0, "trades": 200, "vwap": 210.0, "flags": 0,
        }  # fmt: skip
        assert 0 < await rds.ttl(name) <= settings.redis_forming_ttl_s
        writer.update("kraken", "BTC-EUR", [])  # nothing forming: the key goes
        await writer.flush()
        assert not await rds.exists(name)
    finally:
        await writer.close()


async def test_forming_writer_never_blocks_the_agent_when_redis_is_down(
    settings: Settings,
) -> None:
    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", sink_retry_max_s=0.1)
    writer = FormingBarWriter(down)
    before = REGISTRY.get_sample_value("sepstream_forming_bar_write_errors_total") or 0.0
    started = time.perf_counter()
    writer.update("kraken", "BTC-EUR", [forming_bar(T0, 9.0, 3)])
    assert time.perf_counter() - started < 0.01

    async def failed_twice() -> bool:
        now = REGISTRY.get_sample_value("sepstream_forming_bar_write_errors_total") or 0.0
        return now - before >= 2

    await eventually(failed_twice, within=10, every=0.05)
    await writer.close()  # gives up waiting (logged), does not hang
