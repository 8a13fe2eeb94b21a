"""The adaptive fetch wait against the dev broker (Tansu), which answers a fetch at its
deadline with only what it gathered by then: with a 0 ms wait it returns nothing although
records wait, the way a 10 ms wait does once a partition is far enough behind (the soak
froze that way). The same consumer with `streams.kafka.fetchwait` installed reads everything.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.kafka.admin import ensure_topics
from streams.kafka.clients import kafka_client_kwargs
from streams.kafka.fetchwait import AdaptiveFetchWait, install
from streams.settings import Settings

RECORDS = 5_000


class PeakWait(AdaptiveFetchWait):
    """The policy, remembering the longest wait it chose."""

    peak_ms = 0

    def update(self, *, waiting: bool, starved: bool) -> int:
        self.peak_ms = max(self.peak_ms, super().update(waiting=waiting, starved=starved))
        return self.wait_ms


async def _produce(settings: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=0, **kafka_client_kwargs(settings)
    )
    await producer.start()
    try:
        for start in range(0, RECORDS, 50):  # 100 batches of 50 records
            sends = [
                await producer.send(topic, b"%d" % i, partition=0) for i in range(start, start + 50)
            ]
            await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def _read(settings: Settings, topic: str, *, adaptive: bool, within_s: float) -> int:
    """Records read from offset 0 within `within_s`, by a consumer with a 0 ms fetch wait."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=0,
        **kafka_client_kwargs(settings),
    )
    await consumer.start()
    try:
        policy = PeakWait(0)
        if adaptive:
            install(consumer._fetcher, policy, "test")
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        seen: set[int] = set()
        deadline = time.monotonic() + within_s
        while len(seen) < RECORDS and time.monotonic() < deadline:
            got = await consumer.getmany(tp, timeout_ms=200)
            seen.update(r.offset for r in got.get(tp, []))
        if adaptive:
            await consumer.getmany(tp, timeout_ms=300)  # a few fetches at the log end
            assert policy.peak_ms > 0, "the wait should have grown to get the records"
            assert policy.wait_ms == 0, "and come back to the base once caught up"
        return len(seen)
    finally:
        await consumer.stop()


async def test_a_starved_consumer_reads_everything_once_its_wait_adapts(
    settings: Settings,
) -> None:
    await ensure_topics(settings)
    topic = settings.topic("md.trades.v1")
    await _produce(settings, topic)
    # The premise: this broker returns nothing to a fixed 0 ms wait although 5,000 records
    # wait (if a Tansu upgrade changes that, this test no longer exercises the adaptation).
    assert await _read(settings, topic, adaptive=False, within_s=3.0) == 0
    assert await _read(settings, topic, adaptive=True, within_s=30.0) == RECORDS
