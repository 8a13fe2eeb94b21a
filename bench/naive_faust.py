"""The baseline of `bench.pipeline`: the same work, written the way a typical Faust app is.

One trade per Kafka record (one flat JSON event), one agent that handles a record at a time
(``async for value in stream``) and runs `bench.per_record.PerRecordCore` on it: validate,
1-minute bars and their roll-ups, and for each closed bar its indicators and damping signal;
bad events are dead-lettered, closed bars published, and everything is written with the
SAME sink writers as the pipeline (`bench.per_record.SinkBuffer`). The sink side is given
every reasonable advantage: rows are buffered and written every ``flush_records`` records
or ``flush_ms`` ms, in the background (one write in flight) so the stream keeps running
while PostgreSQL works. What is *not* tuned away is the per-record cost of the Faust stream:
that is the point.

It is deliberately smaller than the real pipeline (one Kafka hop instead of three, no
changelog-backed state), which makes its figure an upper bound for a per-record app.

Run as its own process by the harness: ``python -m bench.naive_faust`` with the
``SEPSTREAM_*`` environment of a `Settings` plus ``BENCH_NAIVE_FLUSH_RECORDS``,
``BENCH_NAIVE_FLUSH_MS`` and ``BENCH_NAIVE_BARE`` (1: decode only, a ceiling).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any, Final

import faust
import orjson
import redis.asyncio as aioredis
import structlog

from bench.per_record import TICK_COLUMNS, Outcome, PerRecordCore, SinkBuffer
from schemas.deadletter import dead_letter
from schemas.events import SCHEMA_VERSION
from streams.app import new_faust_app
from streams.ops.logs import configure_logging
from streams.settings import Settings

log = structlog.get_logger(__name__)

STAGE: Final = "naive"
TRADES: Final = "naive.trades.v1"  # one flat JSON event per record
DLQ: Final = "naive.dlq.v1"
BARS: Final = "naive.bars.v1"
TOPICS: Final = (TRADES, DLQ, BARS)
FIRST_RECORD_KEY: Final = "bench:first_record_ns"  # under the namespace's Redis prefix
__all__ = ["TICK_COLUMNS", "create_app", "event_json"]


def event_json(venue: str, symbol: str, row: Sequence[Any]) -> bytes:
    """One trade as one flat JSON event (`row` in `TICK_COLUMNS` order; -1 ids are null)."""
    ts_event, ts_recv, price, size, side, trade_id, seq = row
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "kind": "trade",
            "venue": venue,
            "symbol": symbol,
            "ts_event": ts_event,
            "ts_recv": ts_recv,
            "price": price,
            "size": size,
            "side": side,
            "trade_id": trade_id if trade_id >= 0 else None,
            "seq": seq if seq >= 0 else None,
        }
    )


def create_app(
    settings: Settings, flush_records: int, flush_ms: float, *, bare: bool = False
) -> faust.App:
    """The worker's Faust configuration (`new_faust_app`), with one per-record agent.

    `bare`: the agent only decodes each record (no validation, bars or sinks) — what the
    Faust per-record machinery alone costs, as a ceiling for the naive variant.
    """
    app = new_faust_app(settings, web_enabled=False)

    def topic(name: str) -> faust.TopicT:
        return app.topic(
            settings.topic(name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )

    trades, dlq, bars_out = topic(TRADES), topic(DLQ), topic(BARS)

    async def stamp_first_record() -> None:
        """Tell the harness when the first record was handled (its clock starts there)."""
        client = aioredis.from_url(settings.redis_url)
        try:
            key = settings.redis_prefix + FIRST_RECORD_KEY
            await client.set(key, time.time_ns(), nx=True, ex=86_400)
        finally:
            await client.aclose()

    if bare:

        @app.agent(trades, name="naive-bare")
        async def decode_only(stream: faust.StreamT[bytes]) -> None:
            first = True
            async for value in stream:
                if first:
                    first = False
                    await stamp_first_record()
                orjson.loads(value)

        return app

    core = PerRecordCore(settings)
    sink = SinkBuffer(settings)
    inflight: list[asyncio.Task[None]] = []
    last_seen = [time.monotonic()]

    async def flush() -> None:
        """Hand the buffer to a background write; wait only if the previous one still runs."""
        taken = sink.take()
        if taken is None:
            return
        if inflight:
            await inflight.pop()
        inflight.append(asyncio.create_task(sink.write(taken)))

    async def publish(out: Outcome) -> None:
        for batch in out.bars:
            await bars_out.send(key=batch.key.encode(), value=batch.encode(bars_out=time.time_ns()))
        sink.add(out)

    @app.agent(trades, name="naive")
    async def process(stream: faust.StreamT[bytes]) -> None:
        first = True
        async for value in stream:
            if first:
                first = False
                await stamp_first_record()
            now = time.time_ns()
            last_seen[0] = time.monotonic()
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:
                doc = None
            out = core.trade(doc, now) if doc is not None else Outcome(reason="malformed_json")
            if out.reason is not None:
                ev = stream.current_event
                msg = ev.message if ev is not None else None
                source = (msg.topic, msg.partition, msg.offset) if msg is not None else None
                await dlq.send(
                    key=ev.key if ev is not None else None,
                    value=dead_letter(
                        stage=STAGE,
                        reason=out.reason,
                        source=source,
                        event=doc if isinstance(doc, dict) else None,
                        original=None if isinstance(doc, dict) else bytes(value),
                    ),
                )
                continue
            sink.add_tick(doc)
            await publish(out)
            if sink.pending >= flush_records:
                await flush()

    @app.timer(flush_ms / 1000, name="naive-flush")
    async def flush_due() -> None:
        if sink.pending and time.monotonic() - sink.since >= flush_ms / 1000:
            await flush()

    @app.timer(1.0, name="naive-close-idle")
    async def close_idle() -> None:
        """With the stream quiet for a second, bars close on wall time (as `agents.bars`)."""
        if time.monotonic() - last_seen[0] >= 1.0:
            await publish(core.close_idle(time.time_ns()))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def close(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await flush()
        if inflight:
            await inflight.pop()
        await sink.close()

    return app


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    flush_records = int(os.environ.get("BENCH_NAIVE_FLUSH_RECORDS", "5000"))
    flush_ms = float(os.environ.get("BENCH_NAIVE_FLUSH_MS", "100"))
    bare = os.environ.get("BENCH_NAIVE_BARE", "") == "1"
    app = create_app(settings, flush_records, flush_ms, bare=bare)
    log.info("naive faust app", group=settings.group_id, flush_records=flush_records, bare=bare)
    faust.Worker(
        app, loglevel=settings.log_level, override_logging=False, redirect_stdouts=False
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
