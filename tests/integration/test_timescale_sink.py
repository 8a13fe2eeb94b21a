"""TimescaleDB writer against the real database: COPY path, redelivery, bar corrections."""

from __future__ import annotations

import asyncpg
import numpy as np

from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.settings import Settings
from streams.sinks.timescale import TimescaleWriter

T0 = 1_700_000_040_000_000_000  # a minute boundary


def _trades(ids: range) -> MarketEventBatch:
    i = np.array(ids, dtype=np.int64) - 100  # a trade's fields depend on its id only
    ts = T0 + i * 1_000_000_123
    return MarketEventBatch.from_columns(
        Kind.TRADE,
        "binance",
        "BTC-USDT",
        {
            "ts_event": ts,
            "ts_recv": ts + 7,
            "price": 100 + i / 8,
            "size": np.ones(len(i)),
            "side": np.where(i % 2, 1, -1),
            "trade_id": np.array(ids),
            "seq": np.where(i % 3, i, -1),
        },
    )


def _bar(close: float, flags: int = 0) -> MarketEventBatch:
    return MarketEventBatch.from_columns(
        Kind.BAR,
        "binance",
        "BTC-USDT",
        {
            "ts_event": [T0],
            "ts_recv": [T0],
            "open": [1.0],
            "high": [5.0],
            "low": [0.5],
            "close": [close],
            "volume": [3.0],
            "trades": [4],
            "vwap": [np.nan],
            "flags": [flags],
        },
        timeframe="1m",
    )


async def test_copy_then_redelivery_is_idempotent(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    writer = TimescaleWriter(settings)
    await writer.start()
    try:
        first = _trades(range(100, 400))
        assert await writer.write([first]) == {"ticks": 300}
        # a redelivery overlapping the stored rows plus new ones, and a repeat inside the write
        again = _trades(range(300, 500))
        await writer.write([again, _trades(range(450, 460))])
        schema = settings.pg_schema
        count = await pg.fetchval(f"SELECT count(*) FROM {schema}.ticks")
        assert count == 400
        row = await pg.fetchrow(
            f"SELECT ts, price, side, ts_event_ns, ts_recv_ns, seq FROM {schema}.ticks "
            "WHERE trade_id = 101"
        )
        assert row["ts_event_ns"] == T0 + 1_000_000_123
        assert row["ts_recv_ns"] == T0 + 1_000_000_130
        assert int(row["ts"].timestamp() * 1_000_000) == (T0 + 1_000_000_123) // 1000
        assert row["price"] == 100.125 and row["side"] == 1 and row["seq"] == 1
        assert await pg.fetchval(f"SELECT seq FROM {schema}.ticks WHERE trade_id = 100") is None
        hyper = await pg.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_schema=$1",
            schema,
        )
        assert hyper == 4
    finally:
        await writer.close()


async def test_bar_upsert_replaces_with_correction_and_stores_null_vwap(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    writer = TimescaleWriter(settings)
    await writer.start()
    try:
        await writer.write([_bar(2.0)])
        await writer.write([_bar(2.0), _bar(3.0, flags=2)])  # redelivery + correction together
        rows = await pg.fetch(f"SELECT close, flags, vwap FROM {settings.pg_schema}.bars")
        assert [(r["close"], r["flags"], r["vwap"]) for r in rows] == [(3.0, 2, None)]
    finally:
        await writer.close()


async def test_tick_archiving_can_be_switched_off(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    writer = TimescaleWriter(Settings.from_env({}, **{**settings.__dict__, "archive_ticks": False}))
    await writer.start()
    try:
        assert await writer.write([_trades(range(5)), _bar(1.0)]) == {"bars": 1}
    finally:
        await writer.close()
