"""A worker SIGKILLed mid-stream and restarted: no tick lost or doubled, bars exact.

Exercises the at-least-once path for real: uncommitted records are redelivered, validate
re-forwards them, the bar builder skips what its changelog-backed state already holds, and
the sinks' idempotent writes absorb the repeats.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import numpy as np

from streams.kafka.admin import ensure_topics, group_lag
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.sources import synthetic
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually
from tests.e2e.test_pipeline import MIN, _counts, _reference_bars, _stored_bars

EVENTS = 60_000


async def test_sigkill_mid_stream_then_restart(settings: Settings, pg: asyncpg.Connection) -> None:
    # Small sink batches so the kill lands between many commits, not before the first.
    settings = Settings.from_env({}, **{**settings.__dict__, "sink_max_records": 8})
    await ensure_topics(settings)
    names = hot_topics(settings)
    now = time.time_ns()
    t0 = (now // MIN - 21) * MIN
    rate = EVENTS / (20 * 60)
    generated = synthetic.generate(11, EVENTS, start_ns=t0, rate_per_s=rate)

    async def produce() -> None:
        # Paced, so the worker is certainly mid-stream when it is killed: input keeps
        # arriving for ~20 s, the kill comes once a tenth of it is stored.
        async with BatchingProducer(settings, names["trades"]) as producer:
            await synthetic.produce(producer, 11, EVENTS, start_ns=t0, rate_per_s=rate, pace=3000)

    schema = settings.pg_schema
    log = ARTIFACTS / f"{settings.namespace}-crash.log"
    first = WorkerProcess(settings, log).start()
    feeding = asyncio.create_task(produce())

    async def some_written() -> bool:
        if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.ticks"):
            return False
        return bool(await pg.fetchval(f"SELECT count(*) >= 6000 FROM {schema}.ticks"))

    try:
        await eventually(some_written, within=120, every=0.05)
    finally:
        first.kill()  # SIGKILL: no clean shutdown, no final commit
    assert not feeding.done(), "the input ended before the kill: not a mid-stream crash"
    await feeding
    reference = _reference_bars(generated)

    second = WorkerProcess(settings, log).start()
    try:

        async def complete() -> tuple[int, int] | None:
            if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.bars"):
                return None
            counts = await _counts(pg, schema)
            lags = await group_lag(settings, settings.group_id, list(names.values())[:3])
            done = counts == (EVENTS, len(reference)) and all(x.messages == 0 for x in lags)
            return counts if done else None

        async def missing() -> object:
            stored = await _stored_bars(pg, schema)
            gone = sorted(set(reference) - set(stored))
            return await _counts(pg, schema), [(v, s, (t - t0) // MIN) for v, s, t in gone]

        await eventually(complete, within=120, describe=missing)
        stored = await _stored_bars(pg, schema)
        assert stored.keys() == reference.keys()
        for k, (o, h, lo, c, v, n) in reference.items():
            so, sh, sl, sc, sv, sn, _flags = stored[k]
            assert (so, sh, sl, sc, sn) == (o, h, lo, c, n), k
            assert np.isclose(sv, v, rtol=1e-12), k
        distinct = await pg.fetchval(
            f"SELECT count(DISTINCT (venue, symbol, trade_id)) FROM {schema}.ticks"
        )
        assert distinct == EVENTS
    finally:
        second.stop()
