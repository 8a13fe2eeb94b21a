"""A Kafka client whose start is cancelled half-way (a worker or a command stopped while it
connects) closes what it opened: no aiokafka client is left syncing metadata in the
background and no connection is left open. The start is cancelled after 0, 0.25, 0.5, … ms
until it had completed, so every phase of it is hit against the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer

from streams.backtest.offsets import OffsetLocator
from streams.kafka.admin import admin_client, offsets_consumer
from streams.kafka.clients import kafka_client_kwargs, stop_consumer
from streams.kafka.producer import BatchingProducer
from streams.ops.consumer_lag import LagCollector
from streams.settings import Settings

Open = Callable[[Settings], contextlib.AbstractAsyncContextManager[object]]


def _lag(settings: Settings) -> LagCollector:
    return LagCollector(settings)


def _producer(settings: Settings) -> BatchingProducer:
    return BatchingProducer(settings, settings.topic("md.trades.v1"))


def _locator(settings: Settings) -> OffsetLocator:
    return OffsetLocator(settings.kafka_bootstrap, **kafka_client_kwargs(settings))


def _syncing() -> int:
    """aiokafka clients still running: each keeps a metadata synchroniser task until closed."""
    return sum(
        not t.done() and "_md_synchronizer" in t.get_coro().__qualname__  # type: ignore[union-attr]
        for t in asyncio.all_tasks()
    )


@pytest.mark.parametrize(
    "opened",
    [admin_client, offsets_consumer, _producer, _lag, _locator],
    ids=lambda f: f.__name__.strip("_"),
)
async def test_a_cancelled_start_leaves_no_client_running(settings: Settings, opened: Open) -> None:
    before = _syncing()
    started = asyncio.Event()

    async def use() -> None:
        async with opened(settings):
            started.set()
            await asyncio.Event().wait()  # until cancelled; then it closes, uncancelled

    unclosed: list[str] = []  # aiokafka reports a connection collected while open
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unclosed.append(context["message"]))
    cancelled_in_start = 0
    try:
        for after_ms in [*(i / 4 for i in range(240)), *range(60, 3000, 20)]:
            task = asyncio.create_task(use())
            await asyncio.sleep(after_ms / 1000)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.01)  # let closing connections finish
            gc.collect()
            assert _syncing() == before, f"a client left running when cancelled at {after_ms} ms"
            assert unclosed == [], f"cancelled at {after_ms} ms"
            if started.is_set():
                break
            cancelled_in_start += 1
        else:
            pytest.fail("the client never started within 3 s")
    finally:
        loop.set_exception_handler(handler)
    assert cancelled_in_start > 0


async def test_a_consumer_stopped_right_after_its_start_closes(settings: Settings) -> None:
    # aiokafka's own stop() raises CancelledError here and leaves the client running (#647)
    before = _syncing()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, **kafka_client_kwargs(settings)
    )
    await consumer.start()
    await stop_consumer(consumer)
    assert _syncing() == before
