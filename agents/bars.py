"""bars: md.events.v1 → md.bars.v1. 1-minute bars in event time, and 5m/15m/1h/1d bars
rolled up from the closed 1-minute bars (kernels.bars.MultiBook).

The agent works in micro-batches: up to `bars_max_records` records, or what arrived within
`bars_linger_ms`. Each record of a batch is applied in order to its instrument's book, which
then closes what its watermark passed (so lateness is judged per record, whatever the
batching); each instrument touched sends ONE md.bars.v1 record per timeframe (its closed and
corrected bars in time order, one version of each: the latest). Order per batch: publish
every record and wait for the broker → save each touched instrument's state → ack. A bar is
thus delivered before the state that no longer holds it is saved (Faust would otherwise hold
an unforced send until the ack, after the changelog write, and a crash in between would lose
the bars for good), and nothing is acked before its effects are delivered and saved.

Forming-bar state is kept per instrument in a changelog-backed Faust table, written once per
batch, so a restarted worker resumes the bars it was building: Faust flushes the producer
(changelog included) before it commits an input offset. Each state also carries the
position in md.trades.v1 of the last record applied (validate's `src` header; one
instrument always comes from one partition), so a record redelivered to this agent, or
re-forwarded by validate after a crash, is not counted twice.
Higher-timeframe bars close when the 1m watermark passes their end and live in the same
table value as the 1m state, so they are exactly as restart-safe.
Bar records from OHLCV sources are already closed bars and pass straight through. Ticks
too late to correct their bar (beyond the correction horizon) are dead-lettered.
An idle timer closes the bars of instruments that went quiet; it and the agent take turns
(`busy`), so neither saves a state that drops bars the other is still delivering.
Each touched instrument's forming 1m bars go to Redis after every batch (FormingBarWriter,
coalesced and off the agent's path): forming bars update Redis, closed bars are final and
reach TimescaleDB and Redis through md.bars.v1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import faust
import numpy as np
import orjson
import structlog

from agents.sinks import delivered
from agents.validate import SOURCE_HEADER
from kernels.bars import Bar, BarBook, Emitted, MultiBook, bars_to_columns
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


@dataclass(slots=True)
class Outgoing:
    """One instrument's share of a batch: its book and the bars it will send, one version
    of each (the latest: a bar corrected by several records goes out once)."""

    book: MultiBook
    venue: str
    symbol: str
    bars: dict[str, dict[int, Bar]] = field(default_factory=dict)  # timeframe → start → bar
    closed: dict[str, int] = field(default_factory=dict)  # timeframe → bars closed

    def add(self, bars: Emitted, *, closed: bool = False) -> None:
        for tf, got in bars.items():
            held = self.bars.setdefault(tf, {})
            for bar in got:
                held[bar.start] = bar
            if closed:
                self.closed[tf] = self.closed.get(tf, 0) + len(got)

    def records(self) -> list[bytes]:
        """One md.bars.v1 record per timeframe, its bars in time order."""
        out = []
        for tf in TIMEFRAMES:
            held = self.bars.get(tf)
            if not held:
                continue
            bars = [held[start] for start in sorted(held)]
            cols = bars_to_columns(bars)
            cols["ts_recv"] = np.full(len(bars), time.time_ns(), dtype=np.int64)
            batch = MarketEventBatch.from_columns(
                Kind.BAR, self.venue, self.symbol, cols, timeframe=tf
            )
            out.append(batch.encode(bars_out=time.time_ns()))
        return out

    def count(self) -> None:
        for tf, n in self.closed.items():
            BARS_CLOSED.labels(tf).inc(n)
        BARS_CORRECTED.inc(sum(map(len, self.bars.values())) - sum(self.closed.values()))


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

    async def send(key: bytes, value: bytes) -> Awaitable[Any]:
        """Send now (forced: not held until the input is acked); returns the delivery."""
        return await topics.bars.send(key=key, value=value, force=True)

    async def publish(outgoing: dict[bytes, Outgoing], deliveries: list[Awaitable[Any]]) -> None:
        """Send the bars, wait for every delivery, then save the states (module doc)."""
        # Encoded now: a rebalance during the awaits below clears `applied`.
        states = {
            key: orjson.dumps({**out.book.to_state(), "src": applied.get(key)})
            for key, out in outgoing.items()
        }
        for key, out in outgoing.items():
            for value in out.records():
                deliveries.append(await send(key, value))
        await delivered(deliveries)
        for key, value in states.items():
            table[key] = value
        for out in outgoing.values():
            forming.update(out.venue, out.symbol, out.book.base.forming.values())
            out.count()

    async def apply(events: Sequence[Any]) -> None:
        """One batch: apply its records in order (closing due bars after each), publish once."""
        outgoing: dict[bytes, Outgoing] = {}
        deliveries: list[Awaitable[Any]] = []
        for event in events:
            msg = event.message
            last_read[msg.tp] = msg.offset
            try:
                batch = decode_batch(event.value)
            except CodecError:
                continue  # the sinks dead-letter undecodable records of this topic
            key = batch.key.encode()
            if batch.kind is Kind.BAR:
                deliveries.append(await send(key, event.value))
                continue
            if batch.kind not in (Kind.TRADE, Kind.GAP):
                continue
            book = book_for(key)
            partition_of[key] = msg.tp
            src = _source(event.headers)
            if src is not None:
                last = applied.get(key)
                if last is not None and last[0] == src[0] and src[1] <= last[1]:
                    continue  # applied before (redelivery): its effect is in the state
                applied[key] = src
            out = outgoing.get(key)
            if out is None:
                out = outgoing[key] = Outgoing(book, batch.venue, batch.symbol)
            if batch.kind is Kind.TRADE:
                fixed, uncorrectable = book.add_trades(
                    batch.cols["ts_event"], batch.cols["price"], batch.cols["size"], time.time_ns()
                )
                out.add(fixed)
                if uncorrectable:
                    DEAD_LETTERS.labels(STAGE, "late_beyond_horizon").inc(uncorrectable)
                    letter = dead_letter(
                        stage=STAGE,
                        reason="late_beyond_horizon",
                        detail=f"{uncorrectable} ticks older than the correction horizon",
                        source=(msg.topic, msg.partition, msg.offset),
                        key=key,
                    )
                    deliveries.append(await topics.dlq.send(key=key, value=letter, force=True))
            else:
                for ts in batch.cols["ts_event"].tolist():
                    out.add(book.mark_gap(ts))
            # Closed after every record, as if records came one by one: whether a later
            # tick corrects a bar (or is beyond the horizon) must not depend on how the
            # records were grouped into takes. Event time only: more input may be queued.
            out.add(book.close_due(None), closed=True)
        await publish(outgoing, deliveries)

    @app.agent(topics.events, name="bars")
    async def build(stream: faust.StreamT[bytes]) -> None:
        # noack_take is on faust.Stream; the StreamT protocol does not declare it
        async for events in stream.noack_take(  # type: ignore[attr-defined]
            settings.bars_max_records, within=settings.bars_linger_ms / 1000
        ):
            async with busy:
                await apply(events)
            for event in events:
                await stream.ack(event)

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
                    out = Outgoing(book, venue, symbol)
                    out.add(closed, closed=True)
                    await publish({key: out}, [])

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
