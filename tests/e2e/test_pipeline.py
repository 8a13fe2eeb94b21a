"""The whole flow on the real services: source → Kafka → worker → TimescaleDB + Redis.

Asserts the foundation's contract: produced = accepted + dead-lettered exactly, every bad
event with its reason, bars equal to a NumPy computation over the same events, the worker
survives bad input, and a full re-run (a second consumer group re-reading everything)
leaves the stored rows unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import numpy as np
import orjson
import redis.asyncio as aioredis

from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.kafka.admin import (
    count_events,
    dead_letter_reasons,
    end_offsets,
    ensure_topics,
    group_lag,
)
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.sources import synthetic
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually, free_port

MIN = 60_000_000_000
GOOD = 20_000
ROLLED = {"5m": 5 * MIN, "15m": 15 * MIN}  # higher timeframes checked against the ticks


def _reference_bars(
    generated: list[tuple[Any, dict[str, np.ndarray]]],
) -> dict[tuple[str, str, int], tuple[float, ...]]:
    """1m OHLCV per instrument straight from the produced arrays (open/close by event time)."""
    out: dict[tuple[str, str, int], tuple[float, ...]] = {}
    for inst, cols in generated:
        order = np.argsort(cols["ts_event"], kind="stable")
        ts, price, size = cols["ts_event"][order], cols["price"][order], cols["size"][order]
        minute = ts // MIN * MIN
        for start in np.unique(minute):
            sel = minute == start
            p = price[sel]
            out[(inst.venue, inst.symbol, int(start))] = (
                p[0],
                p.max(),
                p.min(),
                p[-1],
                size[sel].sum(),
                int(sel.sum()),
            )
    return out


def _reference_rollups(
    generated: list[tuple[Any, dict[str, np.ndarray]]],
) -> dict[tuple[str, str, str, int], tuple[float, ...]]:
    """5m/15m OHLCV straight from the ticks (not from 1m bars), keyed with the timeframe."""
    out: dict[tuple[str, str, str, int], tuple[float, ...]] = {}
    for inst, cols in generated:
        order = np.argsort(cols["ts_event"], kind="stable")
        ts, price, size = cols["ts_event"][order], cols["price"][order], cols["size"][order]
        for tf, period in ROLLED.items():
            bucket = ts // period * period
            for start in np.unique(bucket):
                sel = bucket == start
                p = price[sel]
                out[(inst.venue, inst.symbol, tf, int(start))] = (
                    p[0],
                    p.max(),
                    p.min(),
                    p[-1],
                    size[sel].sum(),
                    int(sel.sum()),
                )
    return out


async def _stored_rollups(
    pg: asyncpg.Connection, schema: str
) -> dict[tuple[str, str, str, int], tuple[float, ...]]:
    rows = await pg.fetch(
        f"SELECT venue, symbol, timeframe, (extract(epoch from ts) * 1e9)::bigint AS start, "
        f"open, high, low, close, volume, trades, flags FROM {schema}.bars "
        f"WHERE timeframe = ANY($1::text[])",
        list(ROLLED),
    )
    return {(r["venue"], r["symbol"], r["timeframe"], r["start"]): tuple(r)[4:] for r in rows}


def _bad_records(first_good: MarketEventBatch, now: int) -> list[tuple[bytes, bytes, str]]:
    """(key, value, expected reason): one record = one dead letter each."""

    def trade(**over: Any) -> bytes:
        cols = {
            "ts_event": [now - 10**9],
            "ts_recv": [now],
            "price": [10.0],
            "size": [1.0],
            "side": [1],
            "trade_id": [1],
        }
        cols.update({k: [v] for k, v in over.items() if k in cols})
        doc = {
            "v": 1,
            "kind": "trade",
            "venue": over.get("venue", "sim_kraken"),
            "symbol": "XRP-EUR",
            "n": 1,
            "cols": cols,
        }
        return orjson.dumps(doc)

    # a repeat of the instrument's newest trade: well inside the dedup window
    dup = first_good.select(np.array([len(first_good) - 1]))
    return [
        (b"k", b"{oops", "malformed_json"),
        (b"k", orjson.dumps({"v": 2, "kind": "trade"}), "unknown_version"),
        (b"sim_kraken:XRP-EUR", trade(price=-5.0), "non_positive_price"),
        (b"sim_kraken:XRP-EUR", trade(price=None), "wrong_type"),
        (b"sim_kraken:XRP-EUR", trade(ts_event=now + 3600 * 10**9), "future_timestamp"),
        (b"nasdaq:XRP-EUR", trade(venue="nasdaq"), "unknown_venue"),
        (b"sim_kraken:XRP-EUR", trade(size=-1.0), "negative_size"),
        (b"k", b"x" * 150_000, "oversized"),
        (b"k", trade(), "key_mismatch"),
        (dup.key.encode(), dup.encode(), "duplicate_trade_id"),
    ]


async def _reconciled(settings: Settings, start: dict[Any, int], produced: int) -> bool:
    names = hot_topics(settings)
    end = await end_offsets(settings, list(names.values()))
    accepted = await count_events(settings, names["events"], start, end)
    rejected = sum(
        v
        for k, v in (await dead_letter_reasons(settings, start, end)).items()
        if k.startswith("validate:")
    )
    assert accepted + rejected <= produced, (accepted, rejected, produced)
    return accepted + rejected == produced


async def _caught_up(settings: Settings, group: str) -> bool:
    names = hot_topics(settings)
    lags = await group_lag(settings, group, [names["trades"], names["events"], names["bars"]])
    return all(x.messages == 0 for x in lags)


async def _counts(pg: asyncpg.Connection, schema: str) -> tuple[int, int]:
    return (
        await pg.fetchval(f"SELECT count(*) FROM {schema}.ticks"),
        await pg.fetchval(f"SELECT count(*) FROM {schema}.bars WHERE timeframe = '1m'"),
    )


async def _stored_bars(
    pg: asyncpg.Connection, schema: str
) -> dict[tuple[str, str, int], tuple[float, ...]]:
    rows = await pg.fetch(
        f"SELECT venue, symbol, (extract(epoch from ts) * 1e9)::bigint AS start, open, high, "
        f"low, close, volume, trades, flags FROM {schema}.bars WHERE timeframe = '1m'"
    )
    return {
        (r["venue"], r["symbol"], r["start"]): (
            r["open"],
            r["high"],
            r["low"],
            r["close"],
            r["volume"],
            r["trades"],
            r["flags"],
        )
        for r in rows
    }


async def test_whole_flow(settings: Settings, pg: asyncpg.Connection, rds: aioredis.Redis) -> None:
    settings = Settings.from_env({}, **{**settings.__dict__, "max_record_bytes": 100_000})
    await ensure_topics(settings)
    names = hot_topics(settings)
    start_offsets = await end_offsets(settings, list(names.values()))
    worker = WorkerProcess(settings, ARTIFACTS / f"{settings.namespace}-worker1.log").start()
    try:
        now = time.time_ns()
        # 15 simulated minutes in the last whole quarter-hour: every 5m and 15m bar they
        # touch closes with the 1m watermark (higher bars are rolled up from 1m bars)
        t0 = (now // (15 * MIN) - 1) * 15 * MIN
        rate = GOOD / (15 * 60)
        generated = synthetic.generate(5, GOOD, start_ns=t0, rate_per_s=rate)
        inst, cols = generated[0]
        first_good = MarketEventBatch.from_columns(Kind.TRADE, inst.venue, inst.symbol, cols)
        bad = _bad_records(first_good, now)
        async with BatchingProducer(settings, names["trades"]) as producer:
            produced = await synthetic.produce(producer, 5, GOOD, start_ns=t0, rate_per_s=rate)
            await producer.flush()
            for key, value, _ in bad:
                await producer.send(key, value)
        assert produced == GOOD
        total = GOOD + len(bad)

        await eventually(lambda: _reconciled(settings, start_offsets, total), within=120)
        end = await end_offsets(settings, list(names.values()))
        reasons = await dead_letter_reasons(settings, start_offsets, end)
        assert reasons == Counter({f"validate:{r}": 1 for _, _, r in bad})
        assert worker.running, "bad input must not stop the worker"

        schema = settings.pg_schema
        reference = _reference_bars(generated)

        async def all_stored() -> tuple[int, int] | None:
            if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.bars"):
                return None  # the sink creates its tables with its first write
            ticks, bars = await _counts(pg, schema)
            return (ticks, bars) if (ticks, bars) == (GOOD, len(reference)) else None

        counts = await eventually(all_stored, within=120, describe=lambda: _counts(pg, schema))
        assert counts == (GOOD, len(reference))
        stored = await _stored_bars(pg, schema)
        assert stored.keys() == reference.keys()
        for k, (o, h, lo, c, v, n) in reference.items():
            so, sh, sl, sc, sv, sn, flags = stored[k]
            assert (so, sh, sl, sc, sn) == (o, h, lo, c, n), k
            assert np.isclose(sv, v, rtol=1e-12), k
            assert flags == 0, k

        # 5m/15m bars rolled up in the stream equal those computed from the ticks. A bar
        # ending after an instrument's last tick closes only as wall time passes (the
        # watermark of an idle instrument advances with it): one ending within 30 s of the
        # last tick must be there within the wait, a later one may or may not be.
        rolled_ref = _reference_rollups(generated)
        last_tick = {(i.venue, i.symbol): int(c["ts_event"].max()) for i, c in generated}
        must = {k for k in rolled_ref if k[3] + ROLLED[k[2]] <= last_tick[(k[0], k[1])] + MIN // 2}
        assert must and any(k[2] == "15m" for k in must)

        async def rolled_stored() -> dict[Any, tuple[float, ...]] | None:
            got = await _stored_rollups(pg, schema)
            return got if must <= got.keys() else None

        rolled = await eventually(rolled_stored, within=60)
        assert rolled.keys() <= rolled_ref.keys()
        for rk, (o, h, lo, c, v, n) in rolled_ref.items():
            if rk not in rolled:
                continue
            so, sh, sl, sc, sv, sn, flags = rolled[rk]
            assert (so, sh, sl, sc, sn) == (o, h, lo, c, n), rk
            assert np.isclose(sv, v, rtol=1e-12), rk
            assert flags == 0, rk

        # Redis: the latest trade per instrument and the bar history (its sink runs on its
        # own, so it may be a write behind the database for a moment)
        async def redis_state() -> list[tuple[int, int]]:
            out = []
            for inst, _ in generated:
                key = f"{inst.venue}:{inst.symbol}"
                latest = await rds.hget(f"{settings.redis_prefix}trade:{key}", "ts_event")
                out.append(
                    (int(latest or 0), await rds.zcard(f"{settings.redis_prefix}bars:1m:{key}"))
                )
            return out

        expected = [
            (
                int(cols["ts_event"].max()),
                sum(1 for key in reference if key[:2] == (inst.venue, inst.symbol)),
            )
            for inst, cols in generated
        ]

        async def redis_caught_up() -> bool:
            return await redis_state() == expected

        await eventually(redis_caught_up, within=30, describe=redis_state)
        assert worker.stop() == 0
    finally:
        worker.kill()

    # Re-run the same input: a second group re-reads every topic from the start and
    # re-writes everything; idempotent storage leaves the same rows and the same bars.
    rerun = Settings.from_env(
        {}, **{**settings.__dict__, "app_id": settings.app_id + "-rerun", "web_port": free_port()}
    )
    again = WorkerProcess(rerun, ARTIFACTS / f"{settings.namespace}-worker2.log").start()
    try:
        await eventually(lambda: _caught_up(rerun, rerun.group_id), within=180)
        await asyncio.sleep(rerun.bar_grace_ms / 1000 + 2)  # let the last bars close and be written
        await eventually(lambda: _caught_up(rerun, rerun.group_id), within=60)
        assert await pg.fetchval(f"SELECT count(*) FROM {schema}.ticks") == GOOD
        assert await _stored_bars(pg, schema) == stored
        assert again.running
    finally:
        again.stop()
