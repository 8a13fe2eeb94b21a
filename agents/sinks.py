"""Sink agents: md.events.v1 + md.bars.v1 → TimescaleDB, and → Redis; the shared sink loop.

Each sink agent takes up to `sink_max_records` records (or what arrived within
`sink_linger_ms`), writes them in one go and acks them only after the write committed;
a failed write is retried with capped exponential backoff and nothing is acked meanwhile,
so the consumer falls behind (lag grows) instead of losing data.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import faust
import structlog

from schemas.batch import CodecError, MarketEventBatch, decode_batch
from schemas.deadletter import dead_letter
from streams.app import Topics
from streams.metrics import (
    DEAD_LETTERS,
    SINK_BUFFERED,
    SINK_LATENCY,
    SINK_RETRIES,
    SINK_ROWS,
    SINK_SECONDS,
)
from streams.settings import Settings
from streams.sinks.redis import RedisWriter
from streams.sinks.timescale import TimescaleWriter

log = structlog.get_logger(__name__)


class Writer[T](Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def write(self, items: Iterable[T], /) -> dict[str, int]: ...


async def retry_forever[R](
    name: str, attempt: Callable[[], Awaitable[R]], max_backoff_s: float
) -> R:
    """Run `attempt` until it succeeds: giving up would mean dropping or acking unwritten data."""
    delay = 0.05
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            SINK_RETRIES.labels(name).inc()
            log.warning("write failed, retrying", sink=name, error=repr(exc), in_s=delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(max_backoff_s, delay * 2)


async def delivered(deliveries: Sequence[Awaitable[Any]]) -> None:
    """Wait for the broker's acks; raise the first failure.

    Unlike `asyncio.gather`, a cancelled wait (the worker stopping mid-batch) leaves the
    deliveries alone: the producer still flushes them on stop, and Faust's publish callback
    would log each cancelled one as an error.
    """
    if not deliveries:
        return
    done, _ = await asyncio.wait([asyncio.ensure_future(d) for d in deliveries])
    errors = [RuntimeError("delivery cancelled") if f.cancelled() else f.exception() for f in done]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


async def dead_letter_undecodable(topics: Topics, stage: str, ev: Any, exc: CodecError) -> None:
    msg = ev.message
    DEAD_LETTERS.labels(stage, exc.reason).inc()
    await topics.dlq.send(
        key=ev.key,
        value=dead_letter(
            stage=stage,
            reason=exc.reason,
            detail=exc.detail,
            source=(msg.topic, msg.partition, msg.offset),
            original=ev.value,
        ),
    )


def register_sink[T](
    app: faust.App,
    topics: Topics,
    settings: Settings,
    *,
    name: str,
    channel: faust.TopicT,
    decode: Callable[[bytes], T],
    writer: Writer[T],
    newest_ns: Callable[[T], int],
    dead_letters: bool,
) -> None:
    """A sink agent: decode records, write them in one go, ack after the commit.

    `newest_ns` gives an item's freshest time stamp, for the end-to-end latency metric;
    `dead_letters`: whether this sink reports undecodable records (one sink per topic does).
    """

    async def write(items: Sequence[T]) -> dict[str, int]:
        await writer.start()  # (re)connects lazily: the store may be down at boot
        return await writer.write(items)

    # The agent's input queue is bounded (stream_buffer_maxsize); while a write is retried
    # it fills, and Faust stops fetching the partitions that feed it. Shown, to be checked.
    inputs: list[Any] = []
    SINK_BUFFERED.labels(name).set_function(lambda: sum(s.channel.queue.qsize() for s in inputs))

    @app.agent(channel, name=f"sink-{name}")
    async def sink(stream: faust.StreamT[bytes]) -> None:
        inputs[:] = [stream]  # one actor per sink; a restarted one replaces it
        # noack_take is on faust.Stream; the StreamT protocol does not declare it
        async for events in stream.noack_take(  # type: ignore[attr-defined]
            settings.sink_max_records, within=settings.sink_linger_ms / 1000
        ):
            items: list[T] = []
            for ev in events:
                try:
                    items.append(decode(ev.value))
                except CodecError as exc:
                    if dead_letters:
                        await dead_letter_undecodable(topics, f"sink-{name}", ev, exc)
            if items:
                started = time.perf_counter()
                rows = await retry_forever(
                    name, functools.partial(write, items), settings.sink_retry_max_s
                )
                SINK_SECONDS.labels(name).observe(time.perf_counter() - started)
                for table, count in rows.items():
                    SINK_ROWS.labels(name, table).inc(count)
                newest = max(newest_ns(item) for item in items)
                SINK_LATENCY.labels(name).observe(max(0, time.time_ns() - newest) / 1e9)
            for ev in events:
                await stream.ack(ev)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def close(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await writer.close()


def _newest_recv(batch: MarketEventBatch) -> int:
    return int(batch.cols["ts_recv"].max())


def own_channel(app: faust.App, *topics: faust.TopicT) -> faust.TopicT:
    """A channel of its own on `topics`: Faust gives each agent on a topic its own copy of
    the records only when each agent has its own channel object."""
    return app.topic(
        *(t.get_topic_name() for t in topics),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


def register_sinks[T](
    app: faust.App,
    topics: Topics,
    settings: Settings,
    *,
    prefix: str,
    inputs: Sequence[faust.TopicT],
    decode: Callable[[bytes], T],
    writers: dict[str, Writer[T]],
    newest_ns: Callable[[T], int],
) -> None:
    """One sink agent per store on `inputs`, each on its own channel; the first store's
    sink dead-letters undecodable records (once per topic, not once per store)."""
    for i, (store, writer) in enumerate(writers.items()):
        register_sink(
            app,
            topics,
            settings,
            name=f"{prefix}{store}",
            channel=own_channel(app, *inputs),
            decode=decode,
            writer=writer,
            newest_ns=newest_ns,
            dead_letters=i == 0,
        )


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    timescale = TimescaleWriter(settings)
    register_sinks(
        app,
        topics,
        settings,
        prefix="",
        inputs=(topics.events, topics.bars),
        decode=decode_batch,
        writers={"timescale": timescale, "redis": RedisWriter(settings)},
        newest_ns=_newest_recv,
    )

    if settings.tick_retention_days:

        @app.timer(3600.0, name="timescale-retention")
        async def retention() -> None:
            dropped = await timescale.drop_old_chunks()
            if dropped:
                log.info("dropped old chunks", chunks=dropped)
