"""REST backfill of 1m bars: only the minutes missing from TimescaleDB are fetched and stored.

A local aiohttp server speaks Binance's `GET /api/v3/klines` (array rows, startTime/endTime/
limit, 429 with Retry-After); the bars table is the test namespace's own schema.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import orjson
import pytest
from aiohttp import web

from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.settings import Settings
from streams.sinks.timescale import TimescaleWriter
from streams.venues import backfill as bf
from streams.venues.binance import BinanceKlines
from tests.conftest import REPO

T0 = datetime(2024, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
MINUTES = 30
NO_BAR_AT_VENUE = 25
STORED = [*range(10), *range(15, 20)]


def kline(minute: int) -> list[Any]:
    """A Binance kline array for minute `minute` after T0."""
    t = T0_MS + minute * 60_000
    close = 100.0 + minute
    return [
        t, f"{close - 0.5:.8f}", f"{close + 1:.8f}", f"{close - 1:.8f}", f"{close:.8f}",
        "2.00000000", t + 59_999, f"{2 * close:.8f}", 7 + minute, "1.0", "100.0", "0",
    ]  # fmt: skip


class KlinesServer:
    def __init__(self) -> None:
        self.rows = [kline(m) for m in range(MINUTES) if m != NO_BAR_AT_VENUE]
        self.requests: list[dict[str, str]] = []
        self.times: list[float] = []
        self.throttle_next = 1  # answer this many requests with 429 first

    async def klines(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        self.times.append(time.monotonic())
        if self.throttle_next:
            self.throttle_next -= 1
            return web.json_response(
                {"code": -1003, "msg": "Too many requests"},
                status=429,
                headers={"Retry-After": "0"},
            )
        q = request.query
        assert q["symbol"] == "BTCUSDT" and q["interval"] == "1m"
        start, end, limit = int(q["startTime"]), int(q["endTime"]), int(q["limit"])
        rows = [r for r in self.rows if start <= r[0] <= end][:limit]
        return web.json_response(rows)


async def serve_klines(server: KlinesServer) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes([web.get("/api/v3/klines", server.klines)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def store_some_bars(settings: Settings) -> None:
    """Bars already in the table, with a close no venue row has (999): must stay untouched."""
    writer = TimescaleWriter(settings)
    await writer.start()
    try:
        n = len(STORED)
        cols = {
            "ts_event": np.array([(T0_MS + m * 60_000) * 1_000_000 for m in STORED]),
            "ts_recv": np.full(n, 1),
            **{k: np.full(n, 999.0) for k in ("open", "high", "low", "close")},
            "volume": np.ones(n),
        }
        batch = MarketEventBatch.from_columns(Kind.BAR, "binance", "BTC-USDT", cols, timeframe="1m")
        await writer.write([batch])
    finally:
        await writer.close()


async def stored(pg: asyncpg.Connection, settings: Settings) -> dict[int, asyncpg.Record]:
    rows = await pg.fetch(
        f"SELECT * FROM {settings.pg_schema}.bars WHERE venue = 'binance' "
        "AND symbol = 'BTC-USDT' AND timeframe = '1m' ORDER BY ts"
    )
    return {int((r["ts"] - T0).total_seconds()) // 60: r for r in rows}


async def test_backfill_fills_only_missing_minutes(
    settings: Settings, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BinanceKlines, "page", 4)  # small pages: pagination is exercised
    await store_some_bars(settings)
    server = KlinesServer()
    runner, port = await serve_klines(server)
    try:
        run = settings.replace(
            binance_rest_url=f"http://127.0.0.1:{port}", backfill_requests_per_s=20.0
        )
        report = await bf.backfill(run, "binance", "BTC-USDT", T0, T0 + timedelta(minutes=MINUTES))
    finally:
        await runner.cleanup()

    assert (report.expected, report.present, report.missing) == (30, 15, 15)
    assert report.written == 14
    assert report.unavailable == [(T0 + timedelta(minutes=NO_BAR_AT_VENUE)).isoformat()]
    # one throttled request retried, then only the two missing runs, paginated by 4
    starts = [int(q["startTime"]) for q in server.requests]
    minute_of = [(s - T0_MS) // 60_000 for s in starts]
    assert minute_of == [10, 10, 14, 20, 24, 29]
    gaps = np.diff(server.times)
    assert (gaps >= 1 / 20 - 0.01).all(), gaps  # paced at the configured rate

    rows = await stored(pg, settings)
    assert sorted(rows) == [m for m in range(MINUTES) if m != NO_BAR_AT_VENUE]
    for m in STORED:
        assert rows[m]["close"] == 999.0  # never overwritten
    r = rows[12]
    assert (r["open"], r["high"], r["low"], r["close"]) == (111.5, 113.0, 111.0, 112.0)
    assert (r["volume"], r["trades"], r["vwap"], r["flags"]) == (2.0, 19, 112.0, 0)


async def test_backfill_command_second_run_finds_nothing_to_do(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    await store_some_bars(settings)
    server = KlinesServer()
    server.throttle_next = 0
    runner, port = await serve_klines(server)
    run = settings.replace(binance_rest_url=f"http://127.0.0.1:{port}")
    args = ["--from", T0.isoformat(), "--to", (T0 + timedelta(minutes=MINUTES)).isoformat()]
    try:
        reports = []
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "streams.cli", "backfill", "--venue", "binance"),
                *("--symbol", "BTCUSDT", *args, "--json"),
                cwd=REPO,
                env={**os.environ, **run.to_env()},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            reports.append(orjson.loads(out))
    finally:
        await runner.cleanup()
    first, second = reports
    assert (first["missing"], first["written"], first["requests"]) == (15, 14, 2)
    assert (second["missing"], second["written"]) == (1, 0)  # only the venue's own hole
    assert len(await stored(pg, settings)) == MINUTES - 1
