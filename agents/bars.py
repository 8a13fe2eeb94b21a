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
(the stage's lock), so neither saves a state that drops bars the other is still delivering.
Each touched instrument's forming 1m bars go to Redis after every batch (FormingBarWriter,
coalesced and off the agent's path): forming bars update Redis, closed bars are final and
reach TimescaleDB and Redis through md.bars.v1.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, Final

import faust
import orjson
import structlog

from agents.stage import Output, Stage, redelivered, state_table
from agents.validate import SOURCE_HEADER
from kernels.bars import BarBook, MultiBook, Outgoing
from schemas.batch import CodecError, decode_batch
from schemas.deadletter import dead_letter
from schemas.events import NS_PER_S, TIMEFRAMES, Kind
from streams.ops.metrics import BARS_CLOSED, BARS_CORRECTED, DEAD_LETTERS
from streams.settings import Settings
from streams.sinks.redis import FormingBarWriter
from streams.topics import Topics

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


class Bars:
    """The stage's logic on the shared runner (agents.stage): books per instrument, loaded
    from the table (or this take's staged state) when first needed."""

    def __init__(
        self, stage: Stage, topics: Topics, settings: Settings, forming: FormingBarWriter
    ) -> None:
        self.stage = stage
        self.topics = topics
        self.forming = forming
        self.period_ns = TIMEFRAMES[TIMEFRAME] * NS_PER_S
        self.grace_ns = settings.bar_grace_ms * 1_000_000
        self.horizon = settings.bar_correction_horizon_min
        self.keep_ns = self.horizon * 60 * NS_PER_S
        self.books: dict[bytes, MultiBook] = {}
        self.partition_of: dict[bytes, Any] = {}  # instrument → its md.events.v1 partition
        self.last_read: dict[Any, int] = {}  # partition → offset of the last record read here
        # instrument → (partition, offset) in md.trades.v1 of the last record applied
        self.applied: dict[bytes, tuple[int, int]] = {}

    def reset(self) -> None:
        self.books.clear()
        self.applied.clear()

    def forget(self) -> None:
        """Partitions revoked: another worker may own these instruments now."""
        self.reset()
        self.partition_of.clear()
        self.last_read.clear()

    def book_for(self, key: bytes) -> MultiBook:
        book = self.books.get(key)
        if book is None:
            stored = self.stage.stored(key)
            if stored is None:
                base = BarBook(
                    period_ns=self.period_ns, grace_ns=self.grace_ns, horizon=self.horizon
                )
                book = MultiBook.new(base, TIMEFRAME, HIGHER, keep_ns=self.keep_ns)
            else:
                state = orjson.loads(stored)
                base = BarBook.from_state(
                    state,
                    period_ns=self.period_ns,
                    grace_ns=self.grace_ns,
                    horizon=self.horizon,
                    wall_ns=time.time_ns(),
                )
                book = MultiBook.from_state(
                    state, base=base, base_tf=TIMEFRAME, periods_ns=HIGHER, keep_ns=self.keep_ns
                )
                if state.get("src"):
                    self.applied[key] = (int(state["src"][0]), int(state["src"][1]))
            self.books[key] = book
        return book

    def compute(self, events: Sequence[Any], out: Output) -> None:
        """Apply the take's records in order (closing due bars after each), emit once."""
        outgoing: dict[bytes, Outgoing] = {}
        for event in events:
            self._record(event, outgoing, out)
        self.emit(outgoing, out)

    def _record(self, event: Any, outgoing: dict[bytes, Outgoing], out: Output) -> None:
        msg = event.message
        self.last_read[msg.tp] = msg.offset
        try:
            batch = decode_batch(event.value)
        except CodecError:
            return  # the sinks dead-letter undecodable records of this topic
        key = batch.key.encode()
        if batch.kind is Kind.BAR:
            out.send(self.topics.bars, key, event.value)  # closed bars from OHLCV sources
            return
        if batch.kind not in (Kind.TRADE, Kind.GAP):
            return
        book = self.book_for(key)
        self.partition_of[key] = msg.tp
        src = _source(event.headers)
        if src is not None:
            if redelivered(self.applied.get(key), src):
                return  # applied before (redelivery): its effect is in the state
            self.applied[key] = src
        held = outgoing.get(key)
        if held is None:
            held = outgoing[key] = Outgoing(book, batch.venue, batch.symbol)
        if batch.kind is Kind.TRADE:
            fixed, uncorrectable = book.add_trades(
                batch.cols["ts_event"], batch.cols["price"], batch.cols["size"], time.time_ns()
            )
            held.add(fixed)
            if uncorrectable:
                DEAD_LETTERS.labels(STAGE, "late_beyond_horizon").inc(uncorrectable)
                letter = dead_letter(
                    stage=STAGE,
                    reason="late_beyond_horizon",
                    detail=f"{uncorrectable} ticks older than the correction horizon",
                    source=(msg.topic, msg.partition, msg.offset),
                    key=key,
                )
                out.send(self.topics.dlq, key, letter)
        else:
            for ts in batch.cols["ts_event"].tolist():
                held.add(book.mark_gap(ts))
        # Closed after every record, as if records came one by one: whether a later
        # tick corrects a bar (or is beyond the horizon) must not depend on how the
        # records were grouped into takes. Event time only: more input may be queued.
        held.add(book.close_due(None), closed=True)

    def emit(self, outgoing: dict[bytes, Outgoing], out: Output) -> None:
        """The bars to send, the states to save after them, the forming bars for Redis."""
        for key, held in outgoing.items():
            out.states[key] = orjson.dumps({**held.book.to_state(), "src": self.applied.get(key)})
            for value in held.records(time.time_ns()):
                out.send(self.topics.bars, key, value)
            out.after.append(functools.partial(self._after, held))

    def _after(self, held: Outgoing) -> None:
        self.forming.update(held.venue, held.symbol, held.book.base.forming.values())
        for tf, n in held.closed.items():
            BARS_CLOSED.labels(tf).inc(n)
        BARS_CORRECTED.inc(held.corrected)

    def idle(self, key: bytes, app: faust.App) -> bool:
        """No input waiting in this instrument's partition: its quiet is real, not lag."""
        tp = self.partition_of.get(key)
        if tp is None:
            return False
        highwater = app.consumer.highwater(tp)
        return highwater is not None and self.last_read[tp] + 1 >= highwater

    def close_quiet(self, app: faust.App, key: bytes, book: MultiBook) -> Output:
        out = Output()
        closed = book.close_due(time.time_ns() if self.idle(key, app) else None)
        if closed:
            venue, _, symbol = key.decode().partition(":")
            held = Outgoing(book, venue, symbol)
            held.add(closed, closed=True)
            self.emit({key: held}, out)
        return out


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    stage = Stage(
        app,
        settings,
        name=STAGE,
        channel=topics.events,
        dlq=topics.dlq,
        max_records=settings.bars_max_records,
        linger_s=settings.bars_linger_ms / 1000,
        table=state_table(app, settings, "bar-state"),
    )
    forming = FormingBarWriter(settings)
    logic = Bars(stage, topics, settings, forming)
    stage.run(logic, forget=logic.forget)

    @app.timer(1.0, name="bars-close-idle")
    async def close_idle() -> None:
        """Close bars of instruments that went quiet (their watermark advances with time)."""
        for key, book in list(logic.books.items()):
            async with stage.lock:  # close → emit → save is one step with the agent's takes
                try:
                    out = logic.close_quiet(app, key, book)
                except Exception:  # must not stop the timer, nor the worker
                    log.exception("closing idle bars failed", key=key.decode("utf-8", "replace"))
                    logic.reset()
                    continue
                await stage.publish(out)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def close(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await forming.close()
