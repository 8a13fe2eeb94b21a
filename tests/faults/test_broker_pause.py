"""The broker stops answering for 20 s mid-stream (SIGSTOP: the dev broker keeps its data in
memory only, so it is paused, never killed): the producer and the worker ride it out, and
every event still arrives exactly once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as aioredis

from schemas.batch import decode_batch
from streams.kafka.admin import end_offsets, read_range
from streams.settings import Settings
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually
from tests.faults.conftest import PrivateServices
from tests.faults.known_stream import KnownStream, assert_all_arrived, tick_count

PAUSE_S = 20.0


@pytest.mark.faults
async def test_broker_paused_mid_stream(
    private_services: PrivateServices,
    fault_settings: Settings,
    fault_pg: asyncpg.Connection,
    fault_redis: aioredis.Redis,
) -> None:
    stream = KnownStream(fault_settings, events=45_000, pace=1_000)
    start = await stream.prepare()
    worker = WorkerProcess(
        fault_settings, ARTIFACTS / f"{fault_settings.namespace}-broker-pause.log"
    ).start()
    assert worker.proc is not None
    pid = worker.proc.pid
    feeding = asyncio.create_task(stream.feed())
    schema = fault_settings.pg_schema
    try:

        async def flowing() -> bool:
            return await tick_count(fault_pg, schema) >= 3_000

        await eventually(flowing, within=60, every=0.2)
        private_services.dev("pause", "kafka")
        try:
            await asyncio.sleep(PAUSE_S)
            assert not feeding.done(), "the input ended before the broker came back"
        finally:
            private_services.dev("resume", "kafka")
        await asyncio.wait_for(feeding, timeout=90)
        await assert_all_arrived(stream, fault_pg, fault_redis, start, within=90)
        assert worker.running and worker.proc.pid == pid
        assert worker.stop() == 0
    finally:
        feeding.cancel()
        worker.kill()


LONG_PAUSE_S = 45.0  # longer than the producer client's request timeout (40 s)


@pytest.mark.faults
async def test_producer_outlasts_a_pause_longer_than_its_timeouts(
    private_services: PrivateServices, fault_settings: Settings
) -> None:
    """Sends that time out are sent again until acknowledged: every event reaches the topic
    (a repeat is possible and harmless: validate and the sinks deduplicate)."""
    stream = KnownStream(fault_settings, events=12_000, pace=1_000)
    start = await stream.prepare()
    feeding = asyncio.create_task(stream.feed())
    try:
        await asyncio.sleep(3)
        private_services.dev("pause", "kafka")
        try:
            await asyncio.sleep(LONG_PAUSE_S)
        finally:
            private_services.dev("resume", "kafka")
        await asyncio.wait_for(feeding, timeout=90)
    finally:
        feeding.cancel()
    assert stream.producer_errors == 0
    topic = hot_topics(fault_settings)["trades"]
    end = await end_offsets(fault_settings, [topic])
    on_topic: set[tuple[str, str, int]] = set()
    async for _, value in read_range(fault_settings, start, end):
        batch = decode_batch(value)
        on_topic.update((batch.venue, batch.symbol, i) for i in batch.cols["trade_id"].tolist())
    assert on_topic == {(v, s, i) for v, s, i, _ in stream.tick_keys()}
