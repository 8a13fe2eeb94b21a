"""The damping agent on the real services: trades → bars → signals in Kafka, TimescaleDB, Redis.

A worker in its own namespace (W = 8 so windows fill within minutes of simulated trades)
must publish one signal per instrument window whose values equal `damp()` run directly on
the closes stored in the `bars` table; the signals must reach the `signals` table and
Redis (latest hash + stream). Then a trained library is published while the worker runs,
and the next signals carry its version and its confidence, without a restart.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any, cast

import asyncpg
import numpy as np
import orjson
import redis.asyncio as aioredis

from kernels.damping import damp
from schemas.signal import Signal, decode_signal
from streams.kafka.admin import end_offsets, ensure_topics, read_range
from streams.kafka.producer import BatchingProducer
from streams.model import library
from streams.settings import Settings
from streams.sources import synthetic
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually

MIN = 60_000_000_000
W = 8
INSTRUMENTS = (
    synthetic.DEFAULT_INSTRUMENTS[0],
    synthetic.DEFAULT_INSTRUMENTS[3],
    synthetic.DEFAULT_INSTRUMENTS[5],
)
FIRST_MIN, SECOND_MIN = 20, 3
FLOATS = ("entropy", "coherence", "stability", "lam", "value", "confidence")

Key = tuple[str, str, int]


async def _closes(pg: asyncpg.Connection, schema: str) -> dict[tuple[str, str], list[Any]]:
    rows = await pg.fetch(
        f"SELECT venue, symbol, (extract(epoch from ts) * 1e9)::bigint AS ts, close "
        f"FROM {schema}.bars WHERE timeframe = '1m' ORDER BY venue, symbol, ts"
    )
    out: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        out.setdefault((r["venue"], r["symbol"]), []).append((r["ts"], r["close"]))
    return out


async def _signals(pg: asyncpg.Connection, schema: str) -> dict[Key, asyncpg.Record]:
    if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.signals"):
        return {}
    rows = await pg.fetch(
        f"SELECT *, (extract(epoch from ts) * 1e9)::bigint AS ts_ns FROM {schema}.signals "
        f"WHERE timeframe = '1m'"
    )
    return {(r["venue"], r["symbol"], r["ts_ns"]): r for r in rows}


def _expected_windows(closes: dict[tuple[str, str], list[Any]]) -> dict[Key, list[float]]:
    """Every window of W consecutive stored bars, by (venue, symbol, last bar's open)."""
    out: dict[Key, list[float]] = {}
    for (venue, symbol), bars in closes.items():
        for end in range(W - 1, len(bars)):
            out[(venue, symbol, bars[end][0])] = [c for _, c in bars[end - W + 1 : end + 1]]
    return out


def _check_values(
    stored: dict[Key, asyncpg.Record], windows: dict[Key, list[float]], lib: library.Library
) -> None:
    keys = sorted(k for k in windows if stored[k]["library_version"] == lib.version)
    assert keys, lib.version
    ref = damp(np.array([windows[k] for k in keys]), lib.paths, backend="numpy")
    for i, k in enumerate(keys):
        row = stored[k]
        assert row["window_size"] == W and row["backend"] in ("numpy", "cupy")
        for name in FLOATS:
            assert np.isclose(row[name], getattr(ref, name)[i], rtol=1e-9, atol=1e-12), (k, name)
        assert row["iterations"] == ref.iterations[i], k
        assert row["converged"] == ref.converged[i] and row["collapse"] == ref.collapse[i], k


async def _produce(settings: Settings, start_ns: int, minutes: int, events: int) -> int:
    """Produce the trades; returns how many 1m bars they make (minutes with a trade)."""
    rate = events / (minutes * 60)
    generated = synthetic.generate(
        3, events, start_ns=start_ns, rate_per_s=rate, instruments=INSTRUMENTS
    )
    topic = hot_topics(settings)["trades"]
    async with BatchingProducer(settings, topic) as producer:
        await synthetic.produce(
            producer, 3, events, start_ns=start_ns, rate_per_s=rate, instruments=INSTRUMENTS
        )
    return sum(len(np.unique(cols["ts_event"] // MIN)) for _, cols in generated)


async def test_signals_flow_and_library_hot_swap(
    settings: Settings, pg: asyncpg.Connection, rds: aioredis.Redis
) -> None:
    settings = Settings.from_env(
        {},
        **{
            **settings.__dict__,
            "damping_window": W,
            "damping_max_wait_ms": 100,
            "library_wait_s": 5.0,
        },
    )
    schema = settings.pg_schema
    await ensure_topics(settings)
    signals_topic = hot_topics(settings)["signals"]
    start = await end_offsets(settings, [signals_topic])
    log_path = ARTIFACTS / f"{settings.namespace}-damping.log"
    worker = WorkerProcess(settings, log_path).start()
    try:
        now = time.time_ns()
        t0 = (now // MIN - FIRST_MIN - 6) * MIN
        t1 = t0 + FIRST_MIN * MIN
        first_bars = await _produce(settings, t0, FIRST_MIN, 6_000)

        async def complete() -> tuple[dict[Key, Any], dict[Key, list[float]]] | None:
            closes = await _closes(pg, schema) if await _signals(pg, schema) else {}
            bars = sum(len(v) for v in closes.values())
            if bars < first_bars:  # the last minute's bars close a grace period later
                return None
            windows = _expected_windows(closes)
            stored = await _signals(pg, schema)
            return (stored, windows) if stored.keys() == windows.keys() else None

        async def state() -> object:
            closes = await _closes(pg, schema)
            return {k: len(v) for k, v in closes.items()}, len(await _signals(pg, schema))

        stored, windows = await eventually(complete, within=120, describe=state)
        assert all(ts < t1 for _, _, ts in windows)
        assert {r["library_version"] for r in stored.values()} == {"default"}
        _check_values(stored, windows, library.Library.default(W))

        # The topic holds the same signals (one record per window, nothing else).
        end = await end_offsets(settings, [signals_topic])
        published: dict[Key, Signal] = {}
        async for _, value in read_range(settings, start, end):
            s = decode_signal(value)
            published[(s.venue, s.symbol, s.ts)] = s
        assert published.keys() == stored.keys()
        for k, s in published.items():
            assert all(getattr(s, n) == stored[k][n] for n in FLOATS), k
            assert (s.timeframe, s.window, s.library_version) == ("1m", W, "default")

        # Redis: the latest signal per instrument, and every signal on the stream.
        p = settings.redis_prefix
        for venue, symbol in {(v, s) for v, s, _ in stored}:
            newest = max(ts for v, s, ts in stored if (v, s) == (venue, symbol))
            h = await rds.hgetall(f"{p}signal:1m:{venue}:{symbol}")
            assert int(h[b"ts"]) == newest
            assert float(h[b"value"]) == stored[(venue, symbol, newest)]["value"]
            assert h[b"library_version"] == b"default"
            assert 0 < await rds.ttl(f"{p}signal:1m:{venue}:{symbol}") <= 600 * 60
        entries = cast(list[Any], await rds.xrange(f"{p}signals"))
        streamed = {
            (e[b"venue"].decode(), e[b"symbol"].decode(), int(e[b"ts"])) for _, e in entries
        }
        assert streamed == stored.keys() and len(entries) >= len(stored)

        # `sepstream train` on this namespace's bars while the worker runs: it stores the
        # library and publishes it on md.model.paths.
        summary = await _train_cli(settings)
        trained = await library.load_latest(pg, schema)
        assert trained is not None and trained.version == summary["version"]
        assert trained.paths.shape == (4, W - 1) and summary["published"]
        closes = await library.load_closes(pg, schema, since=None)
        again = library.train(closes, k=4, window=W, seed=0, created_at=trained.created_at)
        assert np.array_equal(again.paths, trained.paths) and again.version == trained.version
        assert summary["instruments"] == len(INSTRUMENTS)
        assert summary["windows_total"] == sum(len(v) - W + 1 for v in closes.values())

        async def swapped() -> bool:
            text = log_path.read_text()
            return "path library swapped" in text and trained.version in text

        await eventually(swapped, within=30)
        second_bars = await _produce(settings, t1, SECOND_MIN, 900)

        async def more() -> tuple[dict[Key, Any], dict[Key, list[float]]] | None:
            closes = await _closes(pg, schema)
            if sum(len(v) for v in closes.values()) < first_bars + second_bars:
                return None
            windows = _expected_windows(closes)
            stored = await _signals(pg, schema)
            return (stored, windows) if stored.keys() == windows.keys() else None

        stored, windows = await eventually(more, within=120, describe=state)
        for (_, _, ts), row in stored.items():
            assert row["library_version"] == ("default" if ts < t1 else trained.version), ts
        _check_values(stored, windows, library.Library.default(W))
        _check_values(stored, windows, trained)
        assert worker.running
        assert log_path.read_text().count("damping backend chosen") == 1
        assert worker.stop() == 0
    finally:
        worker.kill()

    # A restarted worker resumes: the windows spanning the restart come out complete (the
    # held closes were recovered from the changelog) and with the published library (read
    # back from the compacted topic before the first micro-batch).
    worker = WorkerProcess(settings, log_path).start()
    try:
        t2 = t1 + SECOND_MIN * MIN
        third_bars = await _produce(settings, t2, 2, 600)

        async def resumed() -> tuple[dict[Key, Any], dict[Key, list[float]]] | None:
            closes = await _closes(pg, schema)
            if sum(len(v) for v in closes.values()) < first_bars + second_bars + third_bars:
                return None
            windows = _expected_windows(closes)
            stored = await _signals(pg, schema)
            return (stored, windows) if stored.keys() == windows.keys() else None

        stored, windows = await eventually(resumed, within=120, describe=state)
        assert {r["library_version"] for k, r in stored.items() if k[2] >= t2} == {trained.version}
        _check_values(stored, windows, trained)
        assert worker.stop() == 0
    finally:
        worker.kill()


async def _train_cli(settings: Settings) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.cli",
        "train",
        "--json",
        "--k",
        "4",
        "--window",
        str(W),
        "--since",
        "1d",
        env={**os.environ, **settings.to_env()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    doc: dict[str, Any] = orjson.loads(out)
    return doc
