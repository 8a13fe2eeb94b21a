"""A record that makes a later stage raise is dead-lettered by that stage, which goes on.

Validation keeps such records out of the pipeline, so this writes straight into md.bars.v1,
as a foreign or buggy producer could: bars of one instrument with a poison bar (finite but
absurd, 1e308, which the indicators kernel refuses) between good ones. The indicators stage
must dead-letter exactly that record (stage, `stage_error`, the exception class, the
original bytes), compute every good bar as if the poison had never come, and keep going;
the worker never restarts and its lag returns to zero.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import numpy as np
import pytest

from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.kafka.admin import end_offsets, ensure_topics, read_range
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually
from tests.dead_letters import read_dead_letter
from tests.faults.known_stream import healthz

MIN = 60_000_000_000
GOOD = 40  # 1m bars before and after the poison


def _bar(ts: int, close: float) -> MarketEventBatch:
    return MarketEventBatch.from_columns(
        Kind.BAR,
        "binance",
        "BTC-USDT",
        {
            "ts_event": [ts],
            "ts_recv": [ts + MIN],
            "open": [close],
            "high": [close * 1.001],
            "low": [close * 0.999],
            "close": [close],
            "volume": [2.0],
            "trades": [5],
        },
        timeframe="1m",
    )


@pytest.mark.faults
async def test_poison_bar_is_dead_lettered_by_the_stage_that_raised(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    await ensure_topics(settings)
    names = hot_topics(settings)
    start = await end_offsets(settings, [names["dlq"]])
    t0 = (time.time_ns() // MIN - 3 * GOOD) * MIN
    closes = 100 + np.cumsum(np.sin(np.arange(2 * GOOD)))
    good = [_bar(t0 + i * MIN, float(c)) for i, c in enumerate(closes)]
    poison = _bar(t0 + GOOD * MIN + MIN // 2, 1e308).encode()  # between two good bars
    log_path = ARTIFACTS / f"{settings.namespace}-poison-stage.log"
    worker = WorkerProcess(settings, log_path).start()
    assert worker.proc is not None
    pid = worker.proc.pid
    try:
        async with BatchingProducer(settings, names["bars"]) as producer:
            for i, bar in enumerate(good):
                if i == GOOD:
                    await producer.send(b"binance:BTC-USDT", poison)
                await producer.send(b"binance:BTC-USDT", bar.encode())
        schema = settings.pg_schema

        async def indicators() -> int:
            if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.indicators"):
                return 0
            return int(await pg.fetchval(f"SELECT count(*) FROM {schema}.indicators"))

        async def all_computed() -> bool:
            return await indicators() == len(good)

        await eventually(all_computed, within=90, describe=indicators)

        async def letters() -> list[dict[str, Any]]:
            end = await end_offsets(settings, [names["dlq"]])
            return [read_dead_letter(v) async for _, v in read_range(settings, start, end)]

        got = await eventually(letters, within=30)
        assert [(d["stage"], d["reason"], d["error"]) for d in got] == [
            ("indicators", "stage_error", "ValueError")
        ]
        assert got[0]["original"] == poison and got[0]["topic"] == names["bars"]
        # the good bars computed as if the poison had never come: the SMA-20 of the last bar
        sma = await pg.fetchval(f"SELECT sma_20 FROM {schema}.indicators ORDER BY ts DESC LIMIT 1")
        assert sma == pytest.approx(float(np.mean(closes[-20:])), rel=1e-12)
        status, body = await healthz(settings)
        assert status == 200, body
        assert worker.running and worker.proc.pid == pid
    finally:
        worker.stop()
