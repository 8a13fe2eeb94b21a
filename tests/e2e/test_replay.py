"""Replay for backtests on the real services: a live day, one hour replayed, verified.

A compressed "day" of synthetic trades (3 instruments, record timestamps spanning 24 h of
event time, as a live collector would stamp them) is processed by a live worker. Then
`sepstream replay --verify --json` (the CLI, as a user runs it) replays one hour of two of
the instruments into another namespace with its own worker: it must read only a small part
of the log, replay exactly the events of the range, verify with zero differences, and
leave every live table, key, topic and offset untouched. A tampered replayed bar must be
reported as exactly that one difference.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from schemas.batch import MarketEventBatch
from schemas.events import NS_PER_S, Kind
from streams.backtest.plan import IsolationError, ReplayRange, target_settings
from streams.backtest.verify import from_ns, verify
from streams.kafka.admin import end_offsets, ensure_topics, group_lag
from streams.settings import Settings
from streams.sources import synthetic
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, REPO, eventually

DAY = 86_400 * NS_PER_S
HOUR = 3_600 * NS_PER_S
MIN = 60 * NS_PER_S
EVENTS = 24_000  # ~17 trades a minute over the day: most minutes have a bar per instrument
PICK = {("sim_binance", "BTC-USDT"), ("sim_coinbase", "ETH-USD"), ("sim_kraken", "XRP-EUR")}
INSTRUMENTS = [i for i in synthetic.DEFAULT_INSTRUMENTS if (i.venue, i.symbol) in PICK]
REPLAYED = "BTC-USDT,sim_kraken:XRP-EUR"  # one by symbol, one by venue:symbol
TABLES = ("ticks", "bars", "indicators", "signals")


async def _produce_day(settings: Settings, day0: int) -> list[tuple[Any, dict[str, Any]]]:
    """The day as a live collector publishes it: per instrument, one record per event-time
    minute, stamped with its latest event time. Returns the generated columns."""
    data = synthetic.generate(11, EVENTS, start_ns=day0, rate_per_s=EVENTS / 86_400,
                              instruments=INSTRUMENTS)  # fmt: skip
    records = []
    for inst, cols in data:
        minute = cols["ts_event"] // MIN
        cuts = np.flatnonzero(np.diff(minute)) + 1
        for rows in np.split(np.arange(len(minute)), cuts):
            part = {k: v[rows] for k, v in cols.items()}
            batch = MarketEventBatch.from_columns(Kind.TRADE, inst.venue, inst.symbol, part)
            stamp = int(part["ts_event"].max()) // 1_000_000
            records.append((stamp, batch.key.encode(), batch.encode(collector_out=stamp)))
    records.sort(key=lambda r: r[0])  # the day in the order it happened
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        for stamp, key, value in records:
            await producer.send(settings.topic("md.trades.v1"), value, key=key, timestamp_ms=stamp)
        await producer.flush()
    finally:
        await producer.stop()
    return data


async def _fingerprint(pg: asyncpg.Connection, schema: str) -> dict[str, tuple[int, str]]:
    """(rows, md5 of every row's text) per table: any write to a row changes it."""
    out = {}
    for table in TABLES:
        out[table] = tuple(
            await pg.fetchrow(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                f"FROM {schema}.{table} t"
            )
        )
    return out


async def _redis_fingerprint(rds: aioredis.Redis, prefix: str) -> tuple[int, int]:
    keys = sorted([k async for k in rds.scan_iter(match=f"{prefix}*", count=1000)])
    return len(keys), hash(tuple(keys))


@pytest.fixture
async def backtest_ns(settings: Settings) -> AsyncIterator[str]:
    """A second namespace of this test's, cleaned up like the conftest's own."""
    ns = f"{settings.namespace}_bt"
    yield ns
    conn = await asyncpg.connect(settings.dsn_with_password())
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {ns} CASCADE")
    finally:
        await conn.close()
    client = aioredis.from_url(settings.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{ns}:md:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def test_backtest_namespace_must_be_isolated(settings: Settings) -> None:
    with pytest.raises(IsolationError):
        target_settings(settings, settings.namespace)  # the source's own names
    with pytest.raises(ValueError, match="identifier"):
        target_settings(settings, "")
    with pytest.raises(IsolationError):  # an empty namespace is live's: public, md:, ...
        target_settings(settings.replace(namespace="x"), "x")
    moved = target_settings(settings, f"{settings.namespace}_bt")
    assert moved.pg_schema != settings.pg_schema and moved.group_id != settings.group_id
    assert moved.max_age_s == 0 and moved.web_port != settings.web_port
    with pytest.raises(ValueError, match="after"):
        ReplayRange(10, 10)


async def test_replay_one_hour_of_a_day(
    settings: Settings, pg: asyncpg.Connection, rds: aioredis.Redis, backtest_ns: str
) -> None:
    day0 = (time.time_ns() // DAY - 2) * DAY  # a whole UTC day, two days ago
    start, end = day0 + 12 * HOUR, day0 + 13 * HOUR
    await ensure_topics(settings)
    live = WorkerProcess(settings, ARTIFACTS / f"{settings.namespace}-live.log").start()
    try:
        data = await _produce_day(settings, day0)
        names = hot_topics(settings)
        watched = [t for n, t in names.items() if n != "dlq"]

        async def caught_up() -> bool:
            lags = await group_lag(settings, settings.group_id, watched)
            return sum(x.messages for x in lags) == 0 and await pg.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{settings.pg_schema}.signals"
            )

        await eventually(caught_up, within=150, every=1.0)
        await eventually(caught_up, within=30)  # the sinks' last writes after their linger
        assert live.running
    finally:
        live.stop()

    schema = settings.pg_schema
    before = await _fingerprint(pg, schema)
    redis_before = await _redis_fingerprint(rds, settings.redis_prefix)
    topics_before = await end_offsets(settings, list(names.values()))
    assert before["bars"][0] > 3 * 1_000 and before["signals"][0] > 0

    iso = {t: np.datetime_as_string(np.datetime64(t, "ns"), unit="s") + "Z" for t in (start, end)}
    env = {**os.environ, **settings.to_env(), "SEPSTREAM_LOG_FORMAT": "json"}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams.cli", "replay", "--from", iso[start], "--to", iso[end],
         "--namespace", backtest_ns, "--symbols", REPLAYED, "--verify", "--json",
         "--timeout", "120"],
        env=env, cwd=REPO, capture_output=True, timeout=240, check=False,
    )  # fmt: skip
    (ARTIFACTS / f"{backtest_ns}-replay.log").write_bytes(done.stderr)
    (ARTIFACTS / f"{backtest_ns}-replay.json").write_bytes(done.stdout)
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    doc = orjson.loads(done.stdout)

    # exactly the events of [from − warm-up, to + lead-out) of the chosen instruments
    lo = int(np.datetime64(doc["data_start"].rstrip("Z"), "ns").astype(np.int64))
    hi = int(np.datetime64(doc["data_end"].rstrip("Z"), "ns").astype(np.int64))
    assert lo == start - settings.damping_window * MIN
    assert hi == end + settings.bar_grace_ms * 1_000_000 + MIN
    chosen = [(i, c) for i, c in data if i.symbol in {"BTC-USDT", "XRP-EUR"}]
    expected = sum(int(((c["ts_event"] >= lo) & (c["ts_event"] < hi)).sum()) for _, c in chosen)
    assert doc["events_replayed"] == expected == doc["accepted"] > 0
    assert doc["complete"] and doc["dead_lettered"] == 0
    topic = doc["topics"][settings.topic("md.trades.v1")]
    day_records = sum(o for tp, o in topics_before.items() if tp.topic == names["trades"])
    assert 0 < topic["records_read"] < 0.2 * day_records, (topic, day_records)
    assert set(doc["offset_lookup"]) & {"broker", "bisection"}

    # verified with zero differences, and it compared something in every table/timeframe
    report = doc["verify"]
    assert report["difference_count"] == 0, report["differences"][:20]
    assert report["compared_rows"]["bars"] >= 2 * (60 + 12 + 4 + 1) - 10
    assert report["compared_rows"]["signals"] > 2 * 40
    assert report["compared_values"]["indicators"] > 0
    assert report["not_compared"].get("indicators.ema_9", 0) > 0  # recursive: live has history
    stored = await pg.fetch(f"SELECT DISTINCT symbol, timeframe FROM {backtest_ns}.bars")
    assert {r["symbol"] for r in stored} == {"BTC-USDT", "XRP-EUR"}
    assert {r["timeframe"] for r in stored} >= {"1m", "5m", "15m", "1h"}

    # nothing live was touched: tables, Redis keys, topics
    assert await _fingerprint(pg, schema) == before
    assert await _redis_fingerprint(rds, settings.redis_prefix) == redis_before
    assert await end_offsets(settings, list(names.values())) == topics_before
    assert await rds.exists(f"{backtest_ns}:md:bars:1m:sim_binance:BTC-USDT")

    # a wrong replay does not verify: a tampered bar and an indicator off by 1e-9 are
    # exactly two differences, each with its key, column and both values
    row = await pg.fetchrow(
        f"SELECT ts, close FROM {backtest_ns}.bars WHERE symbol = 'BTC-USDT' "
        "AND timeframe = '5m' AND ts >= $1 ORDER BY ts LIMIT 1 OFFSET 3",
        from_ns(start),
    )
    await pg.execute(
        f"UPDATE {backtest_ns}.bars SET close = close + 0.5 WHERE symbol = 'BTC-USDT' "
        "AND timeframe = '5m' AND ts = $1",
        row["ts"],
    )
    ind = await pg.fetchrow(
        f"SELECT ts, sma_20 FROM {backtest_ns}.indicators WHERE symbol = 'BTC-USDT' "
        "AND timeframe = '1m' AND ts >= $1 ORDER BY ts LIMIT 1",
        from_ns(start + 30 * MIN),
    )
    await pg.execute(
        f"UPDATE {backtest_ns}.indicators SET sma_20 = sma_20 * (1 + 1e-9) "
        "WHERE symbol = 'BTC-USDT' AND timeframe = '1m' AND ts = $1",
        ind["ts"],
    )
    tampered = await verify(
        settings,
        settings.replace(namespace=backtest_ns),
        start_ns=start,
        end_ns=end,
        data_start_ns=lo,
        symbols=frozenset(REPLAYED.split(",")),
    )
    got = [(d.table, d.symbol, d.timeframe, d.ts, d.column, d.live) for d in tampered.differences]
    assert got == [
        ("bars", "BTC-USDT", "5m", _iso(row["ts"]), "close", row["close"]),
        ("indicators", "BTC-USDT", "1m", _iso(ind["ts"]), "sma_20", ind["sma_20"]),
    ]
    assert tampered.differences[0].replay == row["close"] + 0.5
    assert tampered.differences[1].replay == pytest.approx(ind["sma_20"] * (1 + 1e-9), rel=1e-15)


def _iso(moment: Any) -> str:
    return str(moment.isoformat().replace("+00:00", "Z"))
