"""A worker's first run on a namespace with no topics at all, fed at once.

A new cluster or a new namespace has none of the worker's topics: not the hot topics, not
Faust's changelog topics for the stage tables. The worker must create (or wait for) every
one before it processes a record; the feed starts together with the worker, so the first
trades arrive while it is still starting. Every event must be stored, the bars stage must
save its state (the changelog write is what crashed first runs), and the worker must not
restart or log an error.
"""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
import pytest

from streams.kafka.admin import admin_client
from streams.settings import Settings
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually
from tests.faults.known_stream import KnownStream, tick_count, total_lag


@pytest.mark.faults
async def test_fresh_namespace_fed_immediately(settings: Settings, pg: asyncpg.Connection) -> None:
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
    assert not [t for t in existing if settings.namespace in t], "namespace not fresh"

    stream = KnownStream(settings, events=4_000, pace=2_000, minutes=4)
    log_path = ARTIFACTS / f"{settings.namespace}-first-run.log"
    worker = WorkerProcess(settings, log_path).start()
    assert worker.proc is not None
    pid = worker.proc.pid
    try:
        feeding = asyncio.create_task(stream.feed())  # no topic exists yet
        produced = await asyncio.wait_for(feeding, 120)
        assert produced == stream.events and stream.producer_errors == 0

        async def all_stored() -> bool:
            return await tick_count(pg, settings.pg_schema) == stream.events

        stored = lambda: tick_count(pg, settings.pg_schema)  # noqa: E731
        await eventually(all_stored, within=120, describe=stored)

        async def bars_saved() -> bool:  # closed bars stored: the bars state was saved too
            return bool(await pg.fetchval(f"SELECT count(*) FROM {settings.pg_schema}.bars"))

        await eventually(bars_saved, within=60)

        async def caught_up() -> bool:
            return await total_lag(settings) == 0

        await eventually(caught_up, within=60, describe=lambda: total_lag(settings))
        assert worker.running and worker.proc.pid == pid, "the worker died"
        async with admin_client(settings) as admin:
            now = set(await admin.list_topics())
        for name in hot_topics(settings).values():
            assert name in now
        for table in ("bar-state", "indicator-state", "damping-state"):
            assert f"{settings.group_id}-{table}-changelog" in now
    finally:
        worker.stop()
    errors = [
        line
        for line in log_path.read_bytes().splitlines()
        if line.startswith(b"{") and orjson.loads(line).get("level") in ("error", "critical")
    ]
    assert not errors, errors[:5]
    assert b"Traceback" not in log_path.read_bytes()
