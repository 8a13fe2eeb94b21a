"""bars: md.events.v1 → md.bars.v1. 1-minute bars in event time, and 5m/15m/1h/1d bars
rolled up from the closed 1-minute bars (kernels.bars.MultiBook).

Forming-bar state is kept per instrument in a changelog-backed Faust table, written after
each record, so a restarted worker resumes the bars it was building: Faust flushes the
producer (changelog included) before it commits an input offset. Each state also carries
the position in md.trades.v1 of the last record applied (validate's `src` header; one
instrument always comes from one partition), so a record redelivered to this agent, or
re-forwarded by validate after a crash, is not counted twice.
Higher-timeframe bars close when the 1m watermark passes their end and live in the same
table value as the 1m state, so they are exactly as restart-safe. One md.bars.v1 record
carries bars of one timeframe.
Bar records from OHLCV sources are already closed bars and pass straight through.
Each instrument's forming 1m bars go to Redis after every record applied (FormingBarWriter,
coalesced and off the agent's path): forming bars update Redis, closed bars are final and
reach TimescaleDB and Redis through md.bars.v1.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import faust
import numpy as np
import orjson
import structlog

from agents.validate import SOURCE_HEADER
from kernels.bars import BarBook, Emitted, MultiBook, bars_to_columns
from schemas.batch import CodecError, MarketEventBatch, decode_batch
from schemas.deadletter import dead_letter
from schemas.events import NS_PER_S, TIMEFRAMES, Kind
from streams.app import Topics
from streams.metrics import BARS_CLOSED, BARS_CORRECTED, DEAD_LETTERS
from streams.settings import Settings
from streams.sinks.redis import FormingBarWriter

log = structlog.get_logger(__name__)
STAGE: Final = "bars"
TIMEFRAME: Final = "1m"
HIGHER: Final = {tf: s * NS_PER_S for tf, s in TIMEFRAMES.items() if tf != TIMEFRAME}


def _source(headers: Any) -> tuple[int, int] | None:
    """(partition, offset) in md.trades.v1 from validate's header, if present and sane."""
    raw = dict(headers or {}).get(SOURCE_HEADER)
    if raw is None:
        return None
    try:
        partition, offset = bytes(raw).split(b":")
        return int(partition), int(offset)
    except (TypeError, ValueError):
        return None


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    period_ns = TIMEFRAMES[TIMEFRAME] * NS_PER_S
    grace_ns = settings.bar_grace_ms * 1_000_000
    horizon = settings.bar_correction_horizon_min
    table = app.Table(
        "bar-state",
        default=None,
        key_type=bytes,  # Faust derives the changelog's serializers from these types
        value_type=bytes,
        partitions=settings.partitions,
        use_partitioner=True,  # the timer writes too, outside any input event
    )
    keep_ns = horizon * 60 * NS_PER_S
    forming = FormingBarWriter(settings)
    busy = asyncio.Lock()  # close → emit → save is one step for the agent and the timer
    books: dict[bytes, MultiBook] = {}
    partition_of: dict[bytes, Any] = {}  # instrument → its md.events.v1 partition
    last_read: dict[Any, int] = {}  # partition → offset of the last record read here
    # instrument → (partition, offset) in md.trades.v1 of the last record applied
    applied: dict[bytes, tuple[int, int]] = {}

    def book_for(key: bytes) -> MultiBook:
        book = books.get(key)
        if book is None:
            stored: bytes | None = table.get(key)
            if stored is None:
                base = BarBook(period_ns=period_ns, grace_ns=grace_ns, horizon=horizon)
                book = MultiBook.new(base, TIMEFRAME, HIGHER, keep_ns=keep_ns)
            else:
                state = orjson.loads(stored)
                base = BarBook.from_state(
                    state,
                    period_ns=period_ns,
                    grace_ns=grace_ns,
                    horizon=horizon,
                    wall_ns=time.time_ns(),
                )
                book = MultiBook.from_state(
                    state, base=base, base_tf=TIMEFRAME, periods_ns=HIGHER, keep_ns=keep_ns
                )
                if state.get("src"):
                    applied[key] = (int(state["src"][0]), int(state["src"][1]))
            books[key] = book
        return book

    def save(key: bytes, book: MultiBook) -> None:
        table[key] = orjson.dumps({**book.to_state(), "src": applied.get(key)})

    async def emit(key: bytes, venue: str, symbol: str, closed: Emitted, fixed: Emitted) -> None:
        """One record per timeframe: the closed bars, then the corrected ones."""
        deliveries = []
        for tf in TIMEFRAMES:
            bars = closed.get(tf, []) + fixed.get(tf, [])
            if not bars:
                continue
            cols = bars_to_columns(bars)
            cols["ts_recv"] = np.full(len(bars), time.time_ns(), dtype=np.int64)
            batch = MarketEventBatch.from_columns(Kind.BAR, venue, symbol, cols, timeframe=tf)
            # Delivered before the state that no longer holds these bars is saved: Faust
            # would otherwise hold this send until the input is acked, after the changelog
            # write, and a crash in between would lose the bars for good.
            deliveries.append(
                await topics.bars.send(
                    key=key, value=batch.encode(bars_out=time.time_ns()), force=True
                )
            )
        for delivery in deliveries:
            await delivery
        for tf in TIMEFRAMES:
            if closed.get(tf):
                BARS_CLOSED.labels(tf).inc(len(closed[tf]))
        BARS_CORRECTED.inc(sum(len(v) for v in fixed.values()))

    @app.agent(topics.events, name="bars")
    async def build(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            msg = event.message
            last_read[msg.tp] = msg.offset
            try:
                batch = decode_batch(event.value)
            except CodecError:
                continue  # the sinks dead-letter undecodable records of this topic
            key = batch.key.encode()
            if batch.kind is Kind.BAR:
                await topics.bars.send(key=key, value=event.value)
                continue
            if batch.kind not in (Kind.TRADE, Kind.GAP):
                continue
            # One of the agent and the idle timer at a time: a state saved by one must
            # never drop bars whose delivery the other is still awaiting.
            async with busy:
                book = book_for(key)
                partition_of[key] = msg.tp
                src = _source(event.headers)
                if src is not None:
                    last = applied.get(key)
                    if last is not None and last[0] == src[0] and src[1] <= last[1]:
                        continue  # applied before (redelivery): its effect is in the state
                    applied[key] = src
                now = time.time_ns()
                corrections: Emitted = {}
                if batch.kind is Kind.TRADE:
                    corrections, uncorrectable = book.add_trades(
                        batch.cols["ts_event"], batch.cols["price"], batch.cols["size"], now
                    )
                    if uncorrectable:
                        DEAD_LETTERS.labels(STAGE, "late_beyond_horizon").inc(uncorrectable)
                        await topics.dlq.send(
                            key=key,
                            value=dead_letter(
                                stage=STAGE,
                                reason="late_beyond_horizon",
                                detail=f"{uncorrectable} ticks older than the correction horizon",
                                source=(msg.topic, msg.partition, msg.offset),
                                key=key,
                            ),
                        )
                else:
                    for ts in batch.cols["ts_event"].tolist():
                        for tf, fixed in book.mark_gap(ts).items():
                            held = {b.start: b for b in corrections.get(tf, []) + fixed}
                            corrections[tf] = [held[s] for s in sorted(held)]
                closed = book.close_due(None)  # event time only: more input may be queued
                await emit(key, batch.venue, batch.symbol, closed, corrections)
                save(key, book)
                forming.update(batch.venue, batch.symbol, book.base.forming.values())

    def idle(key: bytes) -> bool:
        """No input waiting in this instrument's partition: its quiet is real, not lag."""
        tp = partition_of.get(key)
        if tp is None:
            return False
        highwater = app.consumer.highwater(tp)
        return highwater is not None and last_read[tp] + 1 >= highwater

    @app.timer(1.0, name="bars-close-idle")
    async def close_idle() -> None:
        """Close bars of instruments that went quiet (their watermark advances with time)."""
        for key, book in list(books.items()):
            async with busy:
                closed = book.close_due(time.time_ns() if idle(key) else None)
                if closed:
                    venue, _, symbol = key.decode().partition(":")
                    await emit(key, venue, symbol, closed, {})
                    save(key, book)
                    forming.update(venue, symbol, book.base.forming.values())

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def forget(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Another worker may own these instruments now; reload from the table when needed."""
        books.clear()
        applied.clear()
        partition_of.clear()
        last_read.clear()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def close(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await forming.close()
