"""Sink agents: md.events.v1 + md.bars.v1 → TimescaleDB, and → Redis; the shared sink loop.

Each sink agent takes up to `sink_max_records` records (or what arrived within
`sink_linger_ms`), writes them in one go and acks them only after the write committed;
a write that fails because a store is away is retried with capped exponential backoff and
nothing is acked meanwhile, so the consumer falls behind (lag grows) instead of losing data.
A write that fails because of what a record holds (`record_caused`) is split until that
record is alone, and the record is dead-lettered (`stage_error`, the exception's class, the
original bytes); the rest is written and the sink goes on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import faust
import structlog
from redis.exceptions import DataError as RedisDataError
from redis.exceptions import RedisError

from agents.delivery import delivered, retry_forever
from agents.stage import STAGE_ERROR
from schemas.batch import CodecError, MarketEventBatch, decode_batch
from schemas.deadletter import dead_letter
from streams.ops.metrics import (
    DEAD_LETTERS,
    SINK_BUFFERED,
    SINK_LATENCY,
    SINK_RETRIES,
    SINK_ROWS,
    SINK_SECONDS,
)
from streams.ops.progress import track
from streams.settings import Settings
from streams.sinks.base import Writer
from streams.sinks.redis import RedisWriter
from streams.sinks.timescale import TimescaleWriter
from streams.topics import Topics

log = structlog.get_logger(__name__)


# SQLSTATE classes a record's content causes: 22 data exception (a value out of a column's
# range, a NUL in text), 23 integrity constraint (NOT NULL, CHECK; unique is handled by the
# writers). Anything else from a store (connection, shutdown, disk, permissions) is an outage.
_RECORD_SQLSTATES = ("22", "23")


def record_caused(exc: BaseException) -> bool:
    """Whether a failed write is the fault of what was written (else: retry until it works)."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _RECORD_SQLSTATES
    if isinstance(exc, RedisDataError):
        return True
    if isinstance(exc, OSError | TimeoutError | ConnectionError | RedisError):
        return False
    return isinstance(exc, ValueError | TypeError | ArithmeticError | LookupError)


async def write_isolating[T](
    name: str,
    write: Callable[[Sequence[T]], Awaitable[dict[str, int]]],
    items: Sequence[T],
    on_poison: Callable[[int, BaseException], Awaitable[None]],
    max_backoff_s: float,
) -> dict[str, int]:
    """Write `items`; an outage is retried for ever, a write that an item's content makes
    fail is split in halves until the item is alone, then `on_poison(index, error)` is
    called for it. Every write is idempotent, so the halves that succeed stay written."""
    rows: Counter[str] = Counter()
    todo: list[tuple[int, int]] = [(0, len(items))]
    while todo:
        lo, hi = todo.pop()
        delay = 0.05
        while True:
            try:
                rows.update(await write(items[lo:hi]))
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if record_caused(exc):
                    if hi - lo == 1:
                        await on_poison(lo, exc)
                    else:
                        mid = (lo + hi) // 2
                        todo += [(mid, hi), (lo, mid)]  # the first half first
                    break
                SINK_RETRIES.labels(name).inc()
                log.warning("write failed, retrying", sink=name, error=repr(exc), in_s=delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(max_backoff_s, delay * 2)
    return dict(rows)


def register_sink[T](
    app: faust.App,
    topics: Topics,
    settings: Settings,
    *,
    name: str,
    channel: faust.TopicT,
    decode: Callable[[bytes], T],
    writer: Writer[T, Any],
    newest_ns: Callable[[T], int],
    dead_letters: bool,
) -> None:
    """A sink agent: decode records, write them in one go, ack after the commit.

    `newest_ns` gives an item's freshest time stamp, for the end-to-end latency metric;
    `dead_letters`: whether this sink reports undecodable records (one sink per topic does).
    A record whose content makes the write fail is dead-lettered by every sink it fails in.
    """
    stage = f"sink-{name}"

    async def write(items: Sequence[T]) -> dict[str, int]:
        await writer.start()  # (re)connects lazily: the store may be down at boot
        return await writer.write(items)

    def letter(ev: Any, reason: str, detail: str, error: str | None) -> tuple[Any, bytes]:
        msg = ev.message
        DEAD_LETTERS.labels(stage, reason).inc()
        value = dead_letter(
            stage=stage,
            reason=reason,
            detail=detail[:1000],
            error=error,
            source=(msg.topic, msg.partition, msg.offset),
            key=ev.key,
            original=ev.value,
        )
        return ev.key, value

    async def send_all(letters: Sequence[tuple[Any, bytes]]) -> None:
        await delivered([await topics.dlq.send(key=k, value=v, force=True) for k, v in letters])

    async def take(events: Sequence[Any]) -> None:
        """Write one take; the dead letters it made are delivered before it is acked."""
        items: list[T] = []
        sources: list[Any] = []
        letters: list[tuple[Any, bytes]] = []
        for ev in events:
            try:
                items.append(decode(ev.value))
                sources.append(ev)
            except CodecError as exc:
                if dead_letters:
                    letters.append(letter(ev, exc.reason, exc.detail, None))
            except Exception as exc:  # a decoder bug must not stop the sink
                if dead_letters:
                    letters.append(letter(ev, STAGE_ERROR, str(exc), type(exc).__name__))

        async def poison(i: int, exc: BaseException) -> None:
            log.error("record dead-lettered: the write failed on it", sink=name, error=repr(exc))
            letters.append(letter(sources[i], STAGE_ERROR, str(exc), type(exc).__name__))

        if items:
            started = time.perf_counter()
            rows = await write_isolating(name, write, items, poison, settings.sink_retry_max_s)
            SINK_SECONDS.labels(name).observe(time.perf_counter() - started)
            for table, count in rows.items():
                SINK_ROWS.labels(name, table).inc(count)
            newest = max(newest_ns(item) for item in items)
            SINK_LATENCY.labels(name).observe(max(0, time.time_ns() - newest) / 1e9)
        if letters:
            await retry_forever(f"{stage}-dlq", lambda: send_all(letters), 5.0)

    # The agent's input queue is bounded (stream_buffer_maxsize); while a write is retried
    # it fills, and Faust stops fetching the partitions that feed it. Shown, to be checked.
    inputs: list[Any] = []
    progress = track(app, stage)
    progress.queued = lambda: sum(s.channel.queue.qsize() for s in inputs)
    SINK_BUFFERED.labels(name).set_function(progress.queued)

    @app.agent(channel, name=stage)
    async def sink(stream: faust.StreamT[bytes]) -> None:
        inputs[:] = [stream]  # one actor per sink; a restarted one replaces it
        # noack_take is on faust.Stream; the StreamT protocol does not declare it
        async for events in stream.noack_take(  # type: ignore[attr-defined]
            settings.sink_max_records, within=settings.sink_linger_ms / 1000
        ):
            progress.busy_since = time.monotonic()
            await take(events)
            for ev in events:
                await stream.ack(ev)
            progress.done()

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
    writers: dict[str, Writer[T, Any]],
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
            try:
                dropped = await timescale.drop_old_chunks()
            except Exception as exc:  # retried next hour; must not stop the worker
                log.warning("retention failed", error=repr(exc))
                return
            if dropped:
                log.info("dropped old chunks", chunks=dropped)
