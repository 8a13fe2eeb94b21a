"""OANDA candles backfill: only the minutes missing from TimescaleDB are asked for and stored.

A local aiohttp server speaks OANDA v20's `GET /v3/instruments/{instrument}/candles` (bearer
token, RFC 3339 times, M1 mid candles, at most 5000 candles per answer, `count` refused
together with `from` and `to`), with candles shaped like the fixture
`tests/fixtures/venues/oanda_candles.json` (its `source` names the documentation).
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from click.testing import CliRunner

from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.cli import main
from streams.settings import Settings
from streams.sinks.timescale import TimescaleWriter
from streams.venues import backfill as bf
from streams.venues.base import rfc3339_ns
from streams.venues.oanda import OandaCandles
from tests.collectors.helpers import VENUES_DIR
from tests.conftest import REPO

T0 = datetime(2024, 1, 2, 8, 0, tzinfo=UTC)
MINUTES = 30
STORED = [*range(10), *range(15, 20)]
FIXTURE = orjson.loads((VENUES_DIR / "oanda_candles.json").read_bytes())
assert FIXTURE["source"]


def candle(minute: int, *, complete: bool = True, broken: bool = False) -> dict[str, Any]:
    """The fixture's first candle, moved to minute `minute` after T0 with its own prices."""
    c: dict[str, Any] = copy.deepcopy(FIXTURE["response"]["candles"][0])
    mid = 1.1 + minute / 10_000
    c["time"] = (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
    c["mid"] = {"o": f"{mid:.5f}", "h": f"{mid + 0.0002:.5f}", "l": f"{mid - 0.0001:.5f}"}
    c["mid"]["c"] = f"{mid + 0.0001:.5f}"
    c["volume"] = 10 + minute
    c["complete"] = complete
    if broken:
        c["mid"]["h"] = f"{mid - 0.001:.5f}"  # high below low: never stored
    return c


class CandlesServer:
    def __init__(
        self, absent: frozenset[int] = frozenset(), forming: int = -1, broken: int = -1
    ) -> None:
        self.candles = [
            candle(m, complete=m != forming, broken=m == broken)
            for m in range(MINUTES)
            if m not in absent
        ]
        self.requests: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.requests.append(q)
        assert request.match_info["instrument"] == "EUR_USD"
        assert request.headers["Authorization"] == "Bearer tok-123"
        assert request.headers["Accept-Datetime-Format"] == "RFC3339"
        assert (q["granularity"], q["price"]) == ("M1", "M") and "count" not in q
        start, end = rfc3339_ns(q["from"]), rfc3339_ns(q["to"])
        if (end - start) // 60_000_000_000 + 1 > 5000:
            return web.json_response(
                {"errorMessage": "Maximum value for count exceeded"}, status=400
            )
        got = [c for c in self.candles if start <= rfc3339_ns(c["time"]) <= end]
        return web.json_response({"instrument": "EUR_USD", "granularity": "M1", "candles": got})


async def serve_candles(server: CandlesServer) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes([web.get("/v3/instruments/{instrument}/candles", server.handle)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def store_some_bars(settings: Settings) -> None:
    """Bars already stored, with a close no venue candle has (9.0): must stay untouched."""
    import numpy as np

    writer = TimescaleWriter(settings)
    await writer.start()
    try:
        t0_ns = int(T0.timestamp()) * 1_000_000_000
        n = len(STORED)
        cols = {
            "ts_event": np.array([t0_ns + m * 60_000_000_000 for m in STORED]),
            "ts_recv": np.full(n, 1),
            **{k: np.full(n, 9.0) for k in ("open", "high", "low", "close")},
            "volume": np.ones(n),
        }
        batch = MarketEventBatch.from_columns(Kind.BAR, "oanda", "EUR-USD", cols, timeframe="1m")
        await writer.write([batch])
    finally:
        await writer.close()


async def stored(pg: asyncpg.Connection, settings: Settings) -> dict[int, asyncpg.Record]:
    rows = await pg.fetch(
        f"SELECT * FROM {settings.pg_schema}.bars WHERE venue = 'oanda' "
        "AND symbol = 'EUR-USD' AND timeframe = '1m' ORDER BY ts"
    )
    return {int((r["ts"] - T0).total_seconds()) // 60: r for r in rows}


def second(stamp: str) -> int:
    """Seconds after T0."""
    return (rfc3339_ns(stamp) - int(T0.timestamp()) * 1_000_000_000) // 1_000_000_000


async def test_oanda_backfill_fetches_only_missing_minutes(
    settings: Settings, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OandaCandles, "page", 4)  # 4 minutes a request: paging is exercised
    await store_some_bars(settings)
    server = CandlesServer(absent=frozenset({25}), forming=27, broken=22)
    runner, port = await serve_candles(server)
    try:
        run = settings.replace(
            oanda_rest_url=f"http://127.0.0.1:{port}",
            backfill_requests_per_s=50.0,
            oanda_token="tok-123",
        )
        report = await bf.backfill(run, "oanda", "EUR-USD", T0, T0 + timedelta(minutes=MINUTES))
    finally:
        await runner.cleanup()

    assert (report.expected, report.present, report.missing) == (30, 15, 15)
    assert report.written == 12 and report.requests == 5
    assert report.unavailable == [(T0 + timedelta(minutes=m)).isoformat() for m in (22, 25, 27)]
    # the two missing runs, [10, 14] and [20, 29], in pages of 4 minutes; never a stored one
    spans = [(second(q["from"]), second(q["to"])) for q in server.requests]
    runs = [(10, 13), (14, 14), (20, 23), (24, 27), (28, 29)]
    assert spans == [(a * 60, b * 60 + 59) for a, b in runs]
    rows = await stored(pg, settings)
    assert sorted(rows) == [m for m in range(MINUTES) if m not in (22, 25, 27)]
    for m in STORED:
        assert rows[m]["close"] == 9.0  # never overwritten
    r = rows[12]
    assert (r["open"], r["high"], r["low"], r["close"]) == (1.1012, 1.1014, 1.1011, 1.1013)
    assert (r["volume"], r["trades"], r["vwap"], r["flags"]) == (22.0, 0, None, 0)


async def test_oanda_backfill_command_twice_changes_nothing_the_second_time(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    await store_some_bars(settings)
    server = CandlesServer()
    runner, port = await serve_candles(server)
    run = settings.replace(oanda_rest_url=f"http://127.0.0.1:{port}")
    args = ["--from", T0.isoformat(), "--to", (T0 + timedelta(minutes=MINUTES)).isoformat()]
    env = {**os.environ, **run.to_env(), "SEPSTREAM_OANDA_TOKEN": "tok-123"}
    try:
        reports, snapshots = [], []
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "streams.cli", "backfill", "--venue", "oanda"),
                *("--symbol", "EUR_USD", *args, "--json"),
                cwd=REPO,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            reports.append(orjson.loads(out))
            snapshots.append({m: dict(r) for m, r in (await stored(pg, settings)).items()})
    finally:
        await runner.cleanup()
    first, second = reports
    assert (first["missing"], first["written"], first["requests"]) == (15, 15, 2)
    assert (second["missing"], second["written"], second["requests"]) == (0, 0, 0)
    assert len(server.requests) == 2  # the second run asked the venue nothing
    assert sorted(snapshots[0]) == list(range(MINUTES))
    assert snapshots[1] == snapshots[0]  # not a value, not an updated_at changed


def test_oanda_backfill_without_token_fails_before_contacting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SEPSTREAM_OANDA_TOKEN", raising=False)
    monkeypatch.setenv("SEPSTREAM_PG_DSN", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("SEPSTREAM_OANDA_REST_URL", "http://127.0.0.1:1")
    result = CliRunner().invoke(
        main, ["backfill", "--venue", "oanda", "--symbol", "EUR-USD", "--from", "2h"]
    )
    assert result.exit_code == 1 and "SEPSTREAM_OANDA_TOKEN" in result.output
