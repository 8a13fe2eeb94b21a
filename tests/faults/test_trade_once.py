"""A trade is stored once across a kill -9, whatever timestamp it is sent again with.

The worker's duplicate-id memory dies with it; a venue (or a restarted collector) may then
send trades already stored again, with other timestamps. The ticks table must still hold
each trade id once: the first version stored.
"""

from __future__ import annotations

import time

import asyncpg
import numpy as np
import pytest

from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.kafka.admin import ensure_topics
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually
from tests.faults.known_stream import tick_count, total_lag

INSTRUMENTS = (("binance", "BTC-USDT"), ("kraken", "ETH-EUR"), ("coinbase", "SOL-USD"))
FIRST = 3_000  # trades per instrument before the kill


def _trades(venue: str, symbol: str, ids: np.ndarray, t0: int) -> MarketEventBatch:
    ts = t0 + ids * 7_000_000  # 7 ms apart
    return MarketEventBatch.from_columns(
        Kind.TRADE,
        venue,
        symbol,
        {
            "ts_event": ts,
            "ts_recv": ts + 1_000,
            "price": 100.0 + (ids % 17),
            "size": np.full(len(ids), 0.5),
            "side": np.where(ids % 2, 1, -1),
            "trade_id": ids,
        },
    )


async def _send(settings: Settings, ids: np.ndarray, t0: int) -> None:
    async with BatchingProducer(settings, hot_topics(settings)["trades"]) as producer:
        for venue, symbol in INSTRUMENTS:
            for chunk in np.array_split(ids, max(1, len(ids) // 200)):
                batch = _trades(venue, symbol, chunk, t0)
                await producer.send(batch.key.encode(), batch.encode())
    assert producer.send_errors == 0


@pytest.mark.faults
async def test_same_trade_id_after_kill_9_is_stored_once(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    await ensure_topics(settings)
    schema = settings.pg_schema
    t0 = time.time_ns() - 120 * 10**9
    log = ARTIFACTS / f"{settings.namespace}-trade-once.log"
    first = WorkerProcess(settings, log).start()
    try:
        await _send(settings, np.arange(FIRST), t0)

        async def stored_first() -> bool:
            return await tick_count(pg, schema) == FIRST * len(INSTRUMENTS)

        await eventually(stored_first, within=120, describe=lambda: tick_count(pg, schema))
    finally:
        first.kill()  # SIGKILL: the duplicate-id memory is gone

    second = WorkerProcess(settings, log).start()
    try:
        # Half the stored ids again, 1.5 s later; the other half a minute later; 500 new.
        again = np.arange(FIRST + 500)
        await _send(settings, again[: FIRST // 2], t0 + 1_500_000_000)
        await _send(settings, again[FIRST // 2 :], t0 + 60 * 10**9)
        total = (FIRST + 500) * len(INSTRUMENTS)

        async def stored_all() -> bool:
            return await tick_count(pg, schema) == total

        await eventually(stored_all, within=120, describe=lambda: tick_count(pg, schema))

        async def caught_up() -> bool:
            return await total_lag(settings) == 0

        await eventually(caught_up, within=60, describe=lambda: total_lag(settings))
        assert await tick_count(pg, schema) == total  # nothing more landed after
    finally:
        second.stop()
    rows = await pg.fetch(
        f"SELECT venue, symbol, trade_id, count(*) AS n, min(ts_event_ns) AS ts "
        f"FROM {schema}.ticks GROUP BY 1, 2, 3"
    )
    assert len(rows) == total and all(r["n"] == 1 for r in rows)
    ids = np.array([r["trade_id"] for r in rows])
    kept = np.array([r["ts"] for r in rows])
    old = ids < FIRST  # stored before the kill: the first version is the one kept
    assert np.array_equal(kept[old], t0 + ids[old] * 7_000_000)
