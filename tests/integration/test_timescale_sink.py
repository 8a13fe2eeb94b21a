"""TimescaleDB writer against the real database: COPY path, redelivery, bar corrections."""

from __future__ import annotations

import asyncpg
import numpy as np

from schemas.batch import MarketEventBatch
from schemas.ddl import core_ddl
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
        hyper = await pg.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema = $1",
            schema,
        )
        # the core four; the writer's namespace was provisioned whole (signals, indicators too)
        assert {"ticks", "quotes", "bars", "gaps"} <= {r[0] for r in hyper}
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


def _shifted(ids: range, by_ns: int) -> MarketEventBatch:
    """The same trades sent again with other timestamps (a venue's re-send)."""
    batch = _trades(ids)
    cols = dict(batch.cols)
    cols["ts_event"] = cols["ts_event"] + by_ns
    cols["ts_recv"] = cols["ts_recv"] + by_ns
    return MarketEventBatch.from_columns(Kind.TRADE, batch.venue, batch.symbol, cols)


async def test_a_trade_id_is_stored_once_whatever_its_timestamp(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    writer = TimescaleWriter(settings)
    await writer.start()
    try:
        await writer.write([_trades(range(100, 200))])
        # Re-sent a second later (same chunk) and a day later (another chunk), with new ids
        # mixed in, and the same id twice with two timestamps inside one write.
        await writer.write([_shifted(range(150, 250), 1_000_000_000)])
        await writer.write(
            [_shifted(range(100, 300), 86_400 * 10**9), _shifted(range(299, 301), 5)]
        )
        schema = settings.pg_schema
        rows = await pg.fetch(f"SELECT trade_id, ts_event_ns FROM {schema}.ticks")
        ids = [r["trade_id"] for r in rows]
        assert sorted(ids) == list(range(100, 301))
        first = {r["trade_id"]: r["ts_event_ns"] for r in rows}
        assert first[120] == _trades(range(120, 121)).cols["ts_event"][0]  # the first kept
        assert first[220] == _shifted(range(220, 221), 1_000_000_000).cols["ts_event"][0]
        assert await pg.fetchval(f"SELECT count(*) FROM {schema}.trade_ids") == 201
    finally:
        await writer.close()


async def test_trade_ids_are_backfilled_for_ticks_stored_before_they_existed(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    writer = TimescaleWriter(settings)
    await writer.start()
    try:
        await writer.write([_trades(range(100, 150))])
        schema = settings.pg_schema
        await pg.execute(f"DROP TABLE {schema}.trade_ids")  # a schema of an older release
        await pg.execute(core_ddl(schema))  # what `sepstream db-init` runs on an upgrade
        assert await pg.fetchval(f"SELECT count(*) FROM {schema}.trade_ids") == 50
        await writer.write([_shifted(range(140, 160), 3_000_000_000)])
        assert await pg.fetchval(f"SELECT count(*) FROM {schema}.ticks") == 60
    finally:
        await writer.close()
