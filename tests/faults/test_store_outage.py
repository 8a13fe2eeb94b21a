"""PostgreSQL, then Redis, stopped mid-stream and started again.

While a store is down its sink retries with backoff and acks nothing: the group's committed
offsets on the sink topics stand still while lag grows, the sink's input queue stays within
Faust's bound and the partitions feeding it stop being fetched (no unbounded buffering).
After the restart the backlog drains to lag 0 and every event is stored exactly once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import numpy as np
import psutil
import pytest
import redis.asyncio as aioredis
import structlog

from agents.delivery import retry_forever
from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.kafka.admin import committed_offsets
from streams.settings import Settings
from streams.sinks.timescale import TimescaleWriter
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually
from tests.faults.conftest import PrivateServices
from tests.faults.known_stream import (
    KnownStream,
    assert_all_arrived,
    healthz,
    metrics,
    tick_count,
    total_lag,
)

log = structlog.get_logger(__name__)
OUTAGE_S = 15.0
BUFFER_MAX = 1024  # stream_buffer_maxsize of the worker's Faust app (streams/app.py)
# A loose sanity ceiling only: the evidence of bounded buffering is the paused partitions and
# the queue at its bound, since the outage's input is too small to show in RSS by itself.
RSS_GROWTH_MAX = 150 * 2**20


async def _outage(
    svc: PrivateServices,
    service: str,
    settings: Settings,
    worker: WorkerProcess,
    sink: str,
    *,
    release: asyncio.Event,
) -> dict[str, Any]:
    """Stop `service` for OUTAGE_S, letting the held input flow on (`release`); returns
    what was observed meanwhile."""
    assert worker.proc is not None
    proc = psutil.Process(worker.proc.pid)
    names = hot_topics(settings)
    sink_topics = [names["events"], names["bars"]]
    rss_before = proc.memory_info().rss
    svc.dev("down", service)
    release.set()
    seen: dict[str, Any] = {"buffered": 0.0, "paused": 0.0, "rss_max": rss_before}
    try:
        await asyncio.sleep(3)  # writes in flight when it went down have failed by now
        frozen = await committed_offsets(settings, settings.group_id, sink_topics)
        seen["lag_early"] = await total_lag(settings)
        loop = asyncio.get_running_loop()
        until = loop.time() + OUTAGE_S - 3
        while loop.time() < until:
            m = await metrics(settings)
            seen["buffered"] = max(
                seen["buffered"], m.get(f'sepstream_sink_buffered_records{{sink="{sink}"}}', 0)
            )
            seen["paused"] = max(seen["paused"], m.get("sepstream_paused_partitions", 0))
            seen["retries"] = m.get(f'sepstream_sink_retries_total{{sink="{sink}"}}', 0)
            seen["rss_max"] = max(seen["rss_max"], proc.memory_info().rss)
            status, body = await healthz(settings)
            if status == 503:
                seen["unhealthy"] = sorted(set(seen.get("unhealthy", [])) | set(body["stalled"]))
            await asyncio.sleep(0.5)
        seen["lag_late"] = await total_lag(settings)
        seen["acked_while_down"] = {
            f"{tp.topic}:{tp.partition}": (frozen[tp], now)
            for tp, now in (
                await committed_offsets(settings, settings.group_id, sink_topics)
            ).items()
            if now != frozen[tp]
        }
    finally:
        svc.dev("up", service)
    seen["rss_growth"] = seen["rss_max"] - rss_before
    return seen


@pytest.mark.faults
@pytest.mark.parametrize(
    "outage", [("postgres", "timescale"), ("redis", "redis")], ids=["postgres", "redis"]
)
async def test_store_down_mid_stream(
    private_services: PrivateServices,
    fault_settings: Settings,
    fault_pg: asyncpg.Connection,
    fault_redis: aioredis.Redis,
    outage: tuple[str, str],
) -> None:
    service, sink = outage  # the store stopped, the sink that writes to it
    stream = KnownStream(fault_settings, events=60_000, pace=1_500, hold_after=6_000)
    start = await stream.prepare()
    log_path = ARTIFACTS / f"{fault_settings.namespace}-{service}-outage.log"
    worker = WorkerProcess(fault_settings, log_path).start()
    assert worker.proc is not None
    pid = worker.proc.pid
    feeding = asyncio.create_task(stream.feed())
    schema = fault_settings.pg_schema
    try:

        async def flowing() -> bool:
            return await tick_count(fault_pg, schema) >= 3_000

        await eventually(flowing, within=60, every=0.2)
        if service == "postgres":
            await fault_pg.close()
        seen = await _outage(
            private_services, service, fault_settings, worker, sink, release=stream.release
        )
        log.info("outage observed", service=service, **seen)
        if service == "postgres":
            fault_pg = await asyncpg.connect(fault_settings.dsn_with_password())
        assert not feeding.done(), "the input ended before the store came back"

        assert seen["retries"] > 0, seen  # the sink kept trying, with backoff
        assert seen["acked_while_down"] == {}, seen  # nothing acked before it was written
        assert 0 < seen["lag_early"] < seen["lag_late"], seen  # lag grows
        assert seen["paused"] >= 1, seen  # fetching of its partitions stopped...
        assert 0 < seen["buffered"] <= BUFFER_MAX, seen  # ...with the queue at its bound
        assert seen["rss_growth"] < RSS_GROWTH_MAX, seen
        assert f"sink-{sink}" in seen.get("unhealthy", []), seen  # /healthz said it stalled

        await asyncio.wait_for(feeding, timeout=90)
        # ...and the backlog drains: lag 0, everything stored once
        await assert_all_arrived(stream, fault_pg, fault_redis, start, within=90)
        assert (await healthz(fault_settings))[0] == 200  # advancing again
        assert worker.running and worker.proc.pid == pid
        assert worker.stop() == 0
    finally:
        feeding.cancel()
        worker.kill()
        if not fault_pg.is_closed():
            await fault_pg.close()


@pytest.mark.faults
async def test_writer_start_cut_by_an_outage_creates_its_tables_when_retried(
    private_services: PrivateServices, fault_settings: Settings, fault_pg: asyncpg.Connection
) -> None:
    """PostgreSQL going away after the writer's pool opened but before its DDL ran: the next
    start() must run the DDL again rather than write into tables that were never made."""
    # The sinks' own DDL runs only when they log in as the schema owner (one role for
    # everything); with the default separate writer, db-init's provisioning does it instead.
    fault_settings = fault_settings.replace(pg_writer_user="", pg_writer_password="")
    writer = TimescaleWriter(fault_settings)
    holder = await asyncpg.connect(fault_settings.dsn_with_password())
    await holder.execute("SELECT pg_advisory_lock(hashtext('sepstream-ddl'))")
    starting = asyncio.create_task(writer.start())  # opens its pool, then waits on the lock
    await asyncio.sleep(1.0)
    assert not starting.done()
    await fault_pg.close()
    private_services.dev("down", "postgres")
    with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
        await starting
    private_services.dev("up", "postgres")
    holder.terminate()

    now = time.time_ns()
    batch = MarketEventBatch.from_columns(
        Kind.TRADE,
        "sim_binance",
        "BTC-USDT",
        {
            "ts_event": np.array([now - 2, now - 1]),
            "ts_recv": np.array([now, now]),
            "price": np.array([10.0, 11.0]),
            "size": np.array([1.0, 2.0]),
            "side": np.array([1, -1]),
            "trade_id": np.array([1, 2]),
        },
    )

    async def start_and_write() -> dict[str, int]:
        await writer.start()
        return await writer.write([batch])

    try:
        written = await asyncio.wait_for(retry_forever("test", start_and_write, 0.5), 30)
    finally:
        await writer.close()
    assert written == {"ticks": 2}
    conn = await asyncpg.connect(fault_settings.dsn_with_password())
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {fault_settings.pg_schema}.ticks") == 2
    finally:
        await conn.close()
