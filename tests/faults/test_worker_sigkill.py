"""The worker SIGKILLed mid-batch while input flows, then restarted.

Small sink writes and indicator micro-batches put the kill between many commits and state
saves. Afterwards: every tick stored once, bars exact, Redis latest state right, and every
stored bar's indicators equal to `kernels.indicators.IndicatorState` run uninterrupted over
the stored bar series (the state came back from the changelog; nothing applied twice).
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as aioredis

from streams.settings import Settings
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually
from tests.faults.known_stream import KnownStream, assert_all_arrived, tick_count
from tests.integration.test_indicators_agent import _bars, _check, _complete, _offline


@pytest.mark.faults
async def test_worker_sigkilled_mid_batch(
    fault_settings: Settings, fault_pg: asyncpg.Connection, fault_redis: aioredis.Redis
) -> None:
    settings = Settings.from_env(
        {},
        **{
            **fault_settings.__dict__,
            "sink_max_records": 8,
            "indicators_max_batch": 4,
            "indicators_max_wait_ms": 50,
        },
    )
    stream = KnownStream(settings, events=45_000, pace=1_500, minutes=30, hold_after=15_000)
    start = await stream.prepare()
    schema = settings.pg_schema
    log = ARTIFACTS / f"{settings.namespace}-sigkill.log"
    first = WorkerProcess(settings, log).start()
    feeding = asyncio.create_task(stream.feed())
    try:

        async def mid_stream() -> bool:
            return await tick_count(fault_pg, schema) >= 9_000

        try:
            await eventually(mid_stream, within=60, every=0.05)
        finally:
            first.kill()  # SIGKILL: no clean shutdown, no final commit
            stream.release.set()  # the rest of the input arrives while no worker runs
        assert not feeding.done(), "the input ended before the kill: not a mid-stream crash"
        stored_before = await tick_count(fault_pg, schema)
        assert stored_before < stream.events

        second = WorkerProcess(settings, log).start()
        try:
            await asyncio.wait_for(feeding, timeout=90)
            await assert_all_arrived(stream, fault_pg, fault_redis, start, within=90)
            one_minute = {(v, s, "1m", t) for v, s, t in stream.reference_bars()}
            done = await eventually(
                lambda: _complete(fault_pg, schema, one_minute), within=60, every=1.0
            )
            indicators, bars = done
            for rows in bars.values():  # one series per instrument and timeframe
                assert len({r["ts_ns"] for r in rows}) == len(rows)
            assert {tf for _, _, tf in bars} >= {"1m", "5m"}
            _check(indicators, _offline(await _bars(fault_pg, schema)))
            assert second.running
            assert second.stop() == 0
        finally:
            second.kill()
    finally:
        feeding.cancel()
        first.kill()
