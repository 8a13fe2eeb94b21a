"""The micro-batching producer against the real broker: every event exactly once, batched."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson

from schemas.batch import decode_batch
from schemas.events import Kind
from streams.kafka.admin import end_offsets, ensure_topics, read_range
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings


async def test_every_event_once_in_full_batches_while_lingering(settings: Settings) -> None:
    # A tiny linger makes the background flush race with size-triggered flushes.
    settings = Settings.from_env({}, **{**settings.__dict__, "batch_linger_ms": 0.2})
    await ensure_topics(settings)
    topic = settings.topic("md.trades.v1")
    n, chunk = 100_000, 4_096
    async with BatchingProducer(settings, topic) as producer:
        for start in range(0, n, chunk):
            ids = np.arange(start, min(start + chunk, n))
            await producer.add(
                Kind.TRADE,
                "binance",
                "BTC-USDT",
                {
                    "ts_event": ids + 1,
                    "ts_recv": ids + 2,
                    "price": ids + 1.0,
                    "size": np.ones(len(ids)),
                    "trade_id": ids,
                },
            )
            await asyncio.sleep(0)  # let the linger task run between adds
        # a single event on a second instrument leaves by linger alone, as a batch of one
        await producer.add(
            Kind.TRADE,
            "kraken",
            "BTC-EUR",
            {"ts_event": 5, "ts_recv": 6, "price": 1.0, "size": 1.0, "trade_id": 1},
        )
        await asyncio.sleep(0.05)
    assert producer.events_sent == n + 1 and producer.send_errors == 0

    end = await end_offsets(settings, [topic])
    seen: list[int] = []
    sizes: list[int] = []
    async for _, value in read_range(settings, {}, end):
        batch = decode_batch(value)
        if batch.key == "binance:BTC-USDT":
            seen += batch.cols["trade_id"].tolist()
            sizes.append(len(batch))
        else:
            assert orjson.loads(value)["n"] == 1
    assert sorted(seen) == list(range(n))  # none lost, none twice
    assert max(sizes) <= settings.batch_max_events
    assert sum(s == settings.batch_max_events for s in sizes) >= n // settings.batch_max_events // 2
