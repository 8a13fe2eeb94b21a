"""The indicators agent on the real services: trades → bars (1m..1h) → indicators.

A worker in its own namespace gets an hour of synthetic trades of three instruments. The
indicator rows in TimescaleDB and the latest-indicators hashes in Redis must equal
`IndicatorState` run offline over the closed bars stored in the `bars` table (every
timeframe), bit for bit, with NULL exactly where an indicator is warming up. A second test
SIGKILLs the worker mid-stream, restarts it and feeds it more: the whole series must equal
one uninterrupted offline computation (the state came back from the changelog, and nothing
was applied twice).
"""

from __future__ import annotations

import math
import time
from typing import Any

import asyncpg
import numpy as np
import redis.asyncio as aioredis

from kernels.indicator_books import CONFIG, Books, PendingBar
from kernels.indicators import IndicatorState
from schemas.events import TIMEFRAMES
from schemas.indicator import INDICATORS
from streams.kafka.admin import ensure_topics
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.sources import synthetic
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually

MIN = 60_000_000_000
HOUR = 60 * MIN
INSTRUMENTS = (
    synthetic.DEFAULT_INSTRUMENTS[0],
    synthetic.DEFAULT_INSTRUMENTS[3],
    synthetic.DEFAULT_INSTRUMENTS[5],
)
ROLLED = ("5m", "15m", "1h")  # higher timeframes whose bars all close within the hour

Series = tuple[str, str, str]  # venue, symbol, timeframe


async def _produce(settings: Settings, start_ns: int, minutes: int, events: int) -> set[Any]:
    """Produce the trades; returns the (venue, symbol, tf, start) of the bars they make."""
    rate = events / (minutes * 60)
    generated = synthetic.generate(
        7, events, start_ns=start_ns, rate_per_s=rate, instruments=INSTRUMENTS
    )
    async with BatchingProducer(settings, hot_topics(settings)["trades"]) as producer:
        await synthetic.produce(
            producer, 7, events, start_ns=start_ns, rate_per_s=rate, instruments=INSTRUMENTS
        )
    out = set()
    for inst, cols in generated:
        for tf in ("1m", *ROLLED):
            period = TIMEFRAMES[tf] * 1_000_000_000
            for start in np.unique(cols["ts_event"] // period * period).tolist():
                out.add((inst.venue, inst.symbol, tf, int(start)))
    return out


async def _bars(pg: asyncpg.Connection, schema: str) -> dict[Series, list[asyncpg.Record]]:
    rows = await pg.fetch(
        f"SELECT venue, symbol, timeframe, (extract(epoch from ts) * 1e9)::bigint AS ts_ns, "
        f"open, high, low, close, volume FROM {schema}.bars ORDER BY venue, symbol, timeframe, ts"
    )
    out: dict[Series, list[asyncpg.Record]] = {}
    for r in rows:
        out.setdefault((r["venue"], r["symbol"], r["timeframe"]), []).append(r)
    return out


async def _indicators(pg: asyncpg.Connection, schema: str) -> dict[Any, asyncpg.Record]:
    if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.indicators"):
        return {}
    rows = await pg.fetch(
        f"SELECT *, (extract(epoch from ts) * 1e9)::bigint AS ts_ns FROM {schema}.indicators"
    )
    return {(r["venue"], r["symbol"], r["timeframe"], r["ts_ns"]): r for r in rows}


def _offline(bars: dict[Series, list[asyncpg.Record]]) -> dict[Any, dict[str, float]]:
    """IndicatorState over each stored series, bar by bar from the first one."""
    out: dict[Any, dict[str, float]] = {}
    for (venue, symbol, tf), rows in bars.items():
        state = IndicatorState(CONFIG)
        slot = int(state.add_instruments(1)[0])
        cols = {n: np.array([r[n] for r in rows]) for n in ("open", "high", "low", "close")}
        values = state.update_series(
            slot,
            np.array([r["ts_ns"] for r in rows], dtype=np.int64),
            cols["open"],
            cols["high"],
            cols["low"],
            cols["close"],
            np.array([r["volume"] for r in rows]),
        )
        for i, r in enumerate(rows):
            out[(venue, symbol, tf, r["ts_ns"])] = {n: float(values[n][i]) for n in INDICATORS}
    return out


def _check(stored: dict[Any, asyncpg.Record], expected: dict[Any, dict[str, float]]) -> None:
    assert stored.keys() == expected.keys()
    for k, want in expected.items():
        row = stored[k]
        for name, value in want.items():
            if math.isnan(value):
                assert row[name] is None, (k, name)
            else:
                assert row[name] == value, (k, name, row[name], value)


async def _complete(
    pg: asyncpg.Connection, schema: str, bar_keys: set[Any]
) -> tuple[dict[Any, Any], dict[Series, list[asyncpg.Record]]] | None:
    """Every expected bar stored and every stored bar with its indicator row."""
    stored = await _indicators(pg, schema)
    if not stored:
        return None
    bars = await _bars(pg, schema)
    have = {(*s, r["ts_ns"]) for s, rows in bars.items() for r in rows}
    if not bar_keys <= have or stored.keys() != have:
        return None
    return stored, bars


async def test_indicators_equal_offline_state_in_timescale_and_redis(
    settings: Settings, pg: asyncpg.Connection, rds: aioredis.Redis
) -> None:
    settings = Settings.from_env({}, **{**settings.__dict__, "indicators_max_wait_ms": 100})
    schema = settings.pg_schema
    await ensure_topics(settings)
    worker = WorkerProcess(settings, ARTIFACTS / f"{settings.namespace}-indicators.log").start()
    try:
        t0 = (time.time_ns() // HOUR - 1) * HOUR  # the last whole hour: 1h bars close too
        bar_keys = await _produce(settings, t0, 60, 18_000)

        async def describe() -> object:
            bars = await _bars(pg, schema)
            return {k: len(v) for k, v in bars.items()}, len(await _indicators(pg, schema))

        done = await eventually(lambda: _complete(pg, schema, bar_keys), 120, describe=describe)
        stored, bars = done
        assert {s[2] for s in bars} >= {"1m", *ROLLED}  # 1d too if the hour ended a day
        expected = _offline(bars)
        _check(stored, expected)
        assert any(r["sma_50"] is not None for r in stored.values())  # warm 1m series
        assert all(r["sma_20"] is None for k, r in stored.items() if k[2] == "1h")

        # Redis: the latest record per instrument and timeframe, with a TTL of its timeframe.
        p = settings.redis_prefix

        async def redis_latest() -> bool:
            for venue, symbol, tf in bars:
                h = await rds.hgetall(f"{p}indicators:{tf}:{venue}:{symbol}")
                if int(h.get(b"ts", 0)) != bars[(venue, symbol, tf)][-1]["ts_ns"]:
                    return False
            return True

        await eventually(redis_latest, within=30)
        for venue, symbol, tf in bars:
            name = f"{p}indicators:{tf}:{venue}:{symbol}"
            h = await rds.hgetall(name)
            want = expected[(venue, symbol, tf, int(h[b"ts"]))]
            for ind, value in want.items():
                raw = h[ind.encode()]
                assert (raw == b"") if math.isnan(value) else (float(raw) == value), (name, ind)
            assert 0 < await rds.ttl(name) <= TIMEFRAMES[tf] * settings.redis_indicator_ttl_periods
        assert worker.stop() == 0
    finally:
        worker.kill()


async def test_sigkill_and_restart_continue_the_same_series(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    # Small micro-batches and sink writes: the kill lands between many state saves.
    settings = Settings.from_env(
        {},
        **{
            **settings.__dict__,
            "indicators_max_batch": 4,
            "indicators_max_wait_ms": 50,
            "sink_max_records": 8,
        },
    )
    schema = settings.pg_schema
    await ensure_topics(settings)
    log = ARTIFACTS / f"{settings.namespace}-indicators-kill.log"
    t0 = (time.time_ns() // HOUR - 1) * HOUR
    first_keys = await _produce(settings, t0, 40, 12_000)
    first = WorkerProcess(settings, log).start()

    async def some() -> bool:
        return len(await _indicators(pg, schema)) >= 40

    try:
        await eventually(some, within=120, every=0.05)
    finally:
        first.kill()  # SIGKILL: no clean shutdown, no final commit
    total_first = len(first_keys)
    assert len(await _indicators(pg, schema)) < total_first, "killed too late"

    second = WorkerProcess(settings, log).start()
    try:
        more_keys = await _produce(settings, t0 + 40 * MIN, 20, 6_000)
        done = await eventually(
            lambda: _complete(pg, schema, first_keys | more_keys), 180, every=1.0
        )
        stored, bars = done
        for rows in bars.values():  # one series across the restart, no bar missing
            assert len({r["ts_ns"] for r in rows}) == len(rows)
        _check(stored, _offline(bars))
        assert second.running
    finally:
        second.stop()


def test_rounds_across_instruments_equal_one_series_each() -> None:
    """No services: micro-batches holding several bars of one instrument, shuffled, of two
    timeframes, with repeats and a state reload in between, give each series' own values."""
    rng = np.random.default_rng(5)
    keys = [b"sim:A-B", b"sim:C-D", b"sim:E-F"]
    bars: list[PendingBar] = []
    for key in keys:
        for tf, n in (("1m", 80), ("5m", 16)):
            close = 100 + np.cumsum(rng.normal(0, 1, n))
            for i in range(n):
                c = float(close[i])
                bars.append(
                    PendingBar(
                        key, "sim", key.decode()[4:], tf, i * MIN, c, c + 1, c - 1, c, 2.0, 0
                    )
                )
    series: dict[tuple[bytes, str], list[PendingBar]] = {}
    for b in bars:
        series.setdefault((b.key, b.timeframe), []).append(b)

    books = Books()
    got: dict[tuple[bytes, str, int], dict[str, float | None]] = {}
    cuts = sorted(rng.choice(np.arange(1, len(bars)), 12, replace=False).tolist())
    ordered = sorted(bars, key=lambda b: (b.ts, rng.random()))  # roughly time order
    for k, part in enumerate(np.split(np.array(ordered, dtype=object), cuts)):
        batch = list(part)
        rng.shuffle(batch)  # arrival order inside a micro-batch does not matter
        repeats = len(batch) // 3
        batch += batch[:repeats]  # repeats are skipped
        for key in keys:
            books.load(key, None)
        applied = books.apply(batch, 0)
        assert sum(applied.skipped.values()) == repeats
        assert sum(applied.emitted.values()) == len(applied.records) == len(batch) - repeats
        assert sum(rows for rows, _ in applied.rounds) == len(applied.records)
        for r in applied.records:
            got[(r.venue.encode() + b":" + r.symbol.encode(), r.timeframe, r.ts)] = r.values
        if k == 6:  # a restart: only the encoded table values survive
            saved = {key: books.encode(key) for key in keys}
            books = Books()
            for key, value in saved.items():
                books.load(key, value)
    for (key, tf), rows in series.items():
        state = IndicatorState(CONFIG)
        state.add_instruments(1)
        col = {f: np.array([getattr(b, f) for b in rows]) for f in ("open", "high", "low")}
        want = state.update_series(
            0,
            np.array([b.ts for b in rows], dtype=np.int64),
            col["open"],
            col["high"],
            col["low"],
            np.array([b.close for b in rows]),
            np.array([b.volume for b in rows]),
        )
        for i, b in enumerate(rows):
            values = got[(key, tf, b.ts)]
            for name in INDICATORS:
                w = float(want[name][i])
                assert values[name] == (None if math.isnan(w) else w), (key, tf, i, name)


def test_indicator_record_round_trip_and_rejects() -> None:
    """No services: the md.indicators.v1 codec keeps nulls null and refuses bad records."""
    import orjson
    import pytest

    from schemas.batch import CodecError
    from schemas.indicator import IndicatorRecord, decode_indicator

    values: dict[str, float | None] = {n: None for n in INDICATORS}
    values["ema_9"] = 101.25
    rec = IndicatorRecord("binance", "BTC-USDT", "5m", 300 * 10**9, 1, values, 7)
    doc = orjson.loads(rec.encode())
    assert doc["v"] == 1 and doc["sma_20"] is None and doc["ema_9"] == 101.25
    assert decode_indicator(rec.encode()) == rec
    for bad, reason in (
        (b"{x", "malformed_json"),
        (orjson.dumps({**doc, "v": 2}), "unknown_version"),
        (orjson.dumps({**doc, "rsi": "high"}), "malformed"),
        (orjson.dumps({**doc, "ts": 1.5}), "malformed"),
    ):
        with pytest.raises(CodecError) as err:
            decode_indicator(bad)
        assert err.value.reason == reason
