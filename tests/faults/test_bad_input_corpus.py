"""The bad-input corpus (tests/fixtures/bad_input) through a real worker, next to good traffic.

Every class lands in the dead-letter topic with its reason code, the counts per reason equal
the corpus's exactly, every validate dead letter carries the rejected input, good events
(the corpus's own and a synthetic stream alongside) are stored once each, and the worker
never restarts: same process, nothing logged at error level, no traceback.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from streams.kafka.admin import count_events, end_offsets, read_range
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually
from tests.dead_letters import read_dead_letter
from tests.faults.known_stream import INSTRUMENTS, KnownStream, tick_count
from tests.fixtures.bad_input import corpus_settings, load


@pytest.mark.faults
async def test_bad_input_corpus_is_dead_lettered_with_reasons(
    settings: Settings, pg: asyncpg.Connection, rds: aioredis.Redis
) -> None:
    settings = corpus_settings(settings, tuple(i.symbol for i in INSTRUMENTS))
    good = KnownStream(settings, events=6_000, pace=3_000)
    start = await good.prepare()
    names = hot_topics(settings)
    log_path = ARTIFACTS / f"{settings.namespace}-bad-input.log"
    worker = WorkerProcess(settings, log_path).start()
    assert worker.proc is not None
    pid = worker.proc.pid
    try:
        cases = load(time.time_ns())
        async with BatchingProducer(settings, names["trades"]) as producer:
            for case in cases:
                for key, value in case.records:
                    await producer.send(key, value)
        assert producer.send_errors == 0
        await good.feed()

        expected: Counter[str] = Counter()
        for case in cases:
            expected.update(case.dead)
        validated = good.events + sum(c.validated for c in cases)
        accepted = good.events + sum(c.accepted for c in cases)

        async def dead_letters() -> list[dict[str, Any]]:
            end = await end_offsets(settings, [names["dlq"]])
            return [read_dead_letter(v) async for _, v in read_range(settings, start, end)]

        async def all_dead_lettered() -> list[dict[str, Any]] | None:
            docs = await dead_letters()
            return docs if len(docs) >= expected.total() else None

        docs = await eventually(all_dead_lettered, within=90, describe=dead_letters)
        got = Counter(f"{d['stage']}:{d['reason']}" for d in docs)
        assert got == expected
        for d in docs:
            if d["stage"] == "validate":  # the rejected input goes with its reason
                assert "event" in d or "original" in d, d

        async def forwarded() -> int:
            end = await end_offsets(settings, [names["events"]])
            return await count_events(settings, names["events"], start, end)

        async def all_forwarded() -> int | None:  # dead letters may be ahead of forwards
            n = await forwarded()
            return n if n >= accepted else None

        assert await eventually(all_forwarded, within=90, describe=forwarded) == accepted
        assert accepted + sum(n for k, n in got.items() if k.startswith("validate:")) == validated

        schema = settings.pg_schema

        async def stored() -> bool:
            return await tick_count(pg, schema) >= accepted

        await eventually(stored, within=60, describe=lambda: tick_count(pg, schema))
        assert await tick_count(pg, schema) == accepted
        distinct = await pg.fetchval(
            f"SELECT count(DISTINCT (venue, symbol, trade_id)) FROM {schema}.ticks"
        )
        assert distinct == accepted

        assert worker.running and worker.proc.pid == pid, "bad input must not stop the worker"
        assert worker.stop() == 0
    finally:
        worker.kill()
    bad_lines = []
    for line in log_path.read_text().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:  # Faust's shutdown spinner, or a raw crash
            if "Traceback" in line or "Error" in line:
                bad_lines.append(line)
            continue
        if entry.get("level") in ("error", "critical") or "Traceback" in line:
            bad_lines.append(line)
    assert bad_lines == []
