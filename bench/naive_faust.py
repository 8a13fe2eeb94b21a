"""The baseline of `bench.pipeline`: the same work, written the way a typical Faust app is.

One trade per Kafka record (a JSON `MarketEvent`), one agent that handles a record at a time
(``async for value in stream``): decode, validate (the same rules as `agents.validate`, as
scalar checks), update the instrument's 1-minute bar (`kernels.bars`), dead-letter bad
events, publish closed bars, and write ticks and bars to the SAME sinks as the pipeline
(`TimescaleWriter`, `RedisWriter`). The sink side is given every reasonable advantage: rows
are buffered and written every ``flush_records`` records or ``flush_ms`` ms, in the
background (one write in flight) so the stream keeps running while PostgreSQL works.
What is *not* tuned away is the per-record cost of the Faust stream: that is the point.

It is deliberately smaller than the real pipeline (one Kafka hop instead of three, no
changelog-backed bar state), which makes its figure an upper bound for a per-record app.

Run as its own process by the harness: ``python -m bench.naive_faust`` with the
``SEPSTREAM_*`` environment of a `Settings` plus ``BENCH_NAIVE_FLUSH_RECORDS``,
``BENCH_NAIVE_FLUSH_MS`` and ``BENCH_NAIVE_BARE`` (1: decode only, a ceiling).
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import faust
import numpy as np
import orjson
import redis.asyncio as aioredis
import structlog

from agents.sinks import retry_forever
from kernels.bars import GAP, Bar, BarBook, bars_to_columns
from schemas.batch import MarketEventBatch
from schemas.deadletter import dead_letter
from schemas.events import NS_PER_S, SCHEMA_VERSION, SYMBOL_RE, TIMEFRAMES, VENUE_RE, Kind
from streams.app import new_faust_app
from streams.logs import configure_logging
from streams.settings import Settings
from streams.sinks.redis import RedisWriter
from streams.sinks.timescale import TimescaleWriter

log = structlog.get_logger(__name__)

STAGE: Final = "naive"
TRADES: Final = "naive.trades.v1"  # one JSON MarketEvent per record
DLQ: Final = "naive.dlq.v1"
BARS: Final = "naive.bars.v1"
TOPICS: Final = (TRADES, DLQ, BARS)
FIRST_RECORD_KEY: Final = "bench:first_record_ns"  # under the namespace's Redis prefix
TIMEFRAME: Final = "1m"
TICK_COLUMNS: Final = ("ts_event", "ts_recv", "price", "size", "side", "trade_id", "seq")


def event_json(venue: str, symbol: str, row: Sequence[Any]) -> bytes:
    """One trade as a JSON `MarketEvent` (`row` in `TICK_COLUMNS` order; -1 ids are null)."""
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class EventChecker:
    """`agents.validate.Validator`'s rules for one trade, as scalar Python checks.

    Calling the vectorised Validator on a one-event batch would charge the baseline for
    NumPy's per-call overhead on 1-element arrays, which no per-record app would pay.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.venues = frozenset(settings.venues)
        self.symbols = frozenset(settings.symbols)
        self.skew_ns = settings.max_future_skew_ms * 1_000_000
        self.max_age_ns = settings.max_age_s * NS_PER_S
        self._seen: dict[str, tuple[set[int], deque[int]]] = {}

    def reason(self, doc: Any, now_ns: int) -> str | None:
        """None when valid, else the reason code of the first rule failed (Validator order)."""
        if not isinstance(doc, dict):
            return "malformed"
        if doc.get("v") != SCHEMA_VERSION:
            return "unknown_version"
        if doc.get("kind") != "trade":
            return "unknown_kind"  # the baseline handles trades only (all the input is)
        venue, symbol = doc.get("venue"), doc.get("symbol")
        if not isinstance(venue, str) or not isinstance(symbol, str):
            return "malformed"
        if not VENUE_RE.match(venue) or venue not in self.venues:
            return "unknown_venue"
        if not SYMBOL_RE.match(symbol):
            return "bad_symbol"
        if self.symbols and symbol not in self.symbols:
            return "unknown_symbol"
        ts: Any = doc.get("ts_event")
        recv: Any = doc.get("ts_recv")
        price: Any = doc.get("price")
        size: Any = doc.get("size")
        side: Any = doc.get("side")
        trade_id: Any = doc.get("trade_id")
        seq: Any = doc.get("seq")
        if not (
            _is_int(ts)
            and _is_int(recv)
            and _is_num(price)
            and _is_num(size)
            and (side is None or _is_int(side))
            and (trade_id is None or _is_int(trade_id))
            and (seq is None or _is_int(seq))
        ):
            return "wrong_type"
        if ts <= 0 or recv <= 0:
            return "bad_timestamp"
        if ts > now_ns + self.skew_ns:
            return "future_timestamp"
        if self.max_age_ns and ts < now_ns - self.max_age_ns:
            return "stale_timestamp"
        if not math.isfinite(price):
            return "non_finite_price"
        if price <= 0:
            return "non_positive_price"
        if not math.isfinite(size):
            return "non_finite_size"
        if size < 0:
            return "negative_size"
        if side is not None and not -1 <= side <= 1:
            return "bad_side"
        if trade_id is None or trade_id < 0:
            return "missing_trade_id"
        return self._duplicate(f"{venue}:{symbol}", trade_id)

    def _duplicate(self, key: str, trade_id: int) -> str | None:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = (set(), deque())
        ids, order = seen
        if trade_id in ids:
            return "duplicate_trade_id"
        ids.add(trade_id)
        order.append(trade_id)
        if len(order) > self.settings.dedup_window:
            ids.discard(order.popleft())
        return None


def add_trade(book: BarBook, ts: int, price: float, size: float, wall_ns: int) -> list[Bar]:
    """`BarBook.add_trades` for a single trade, without NumPy; returns corrected bars."""
    start = ts // book.period_ns * book.period_ns
    if start + book.period_ns <= book.closed_through:
        # a late tick for a closed bar: rare, so take the book's own correction path
        corrections, _ = book.add_trades(
            np.array([ts], dtype=np.int64), np.array([price]), np.array([size]), wall_ns
        )
        return corrections
    part = Bar(start, price, price, price, price, size, 1, price * size, ts, ts)
    bar = book.forming.get(start)
    if bar is None:
        if start in book.gap_starts:
            part.flags |= GAP
        book.forming[start] = part
    else:
        bar.merge(part)
    if ts > book.max_ts:
        book.max_ts, book.wall_at_max = ts, wall_ns
    return []


class BufferedSink:
    """Ticks buffered per instrument, written with closed bars in one background write."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timescale = TimescaleWriter(settings)
        self.redis = RedisWriter(settings)
        self.ticks: dict[tuple[str, str], list[list[Any]]] = {}
        self.bars: list[MarketEventBatch] = []
        self.pending = 0
        self.since = time.monotonic()
        self._inflight: asyncio.Task[None] | None = None

    def add_tick(self, venue: str, symbol: str, row: list[Any]) -> None:
        rows = self.ticks.get((venue, symbol))
        if rows is None:
            rows = self.ticks[(venue, symbol)] = []
        if not self.pending:
            self.since = time.monotonic()
        rows.append(row)
        self.pending += 1

    def add_bars(self, batch: MarketEventBatch) -> None:
        self.bars.append(batch)
        if not self.pending:
            self.since = time.monotonic()
        self.pending += 1

    async def flush(self) -> None:
        """Hand the buffer to a background write; wait only if the previous one still runs."""
        if not self.pending:
            return
        if self._inflight is not None:
            await self._inflight
        batches = list(self.bars)
        for (venue, symbol), rows in self.ticks.items():
            cols = dict(zip(TICK_COLUMNS, zip(*rows, strict=True), strict=True))
            batches.append(MarketEventBatch.from_columns(Kind.TRADE, venue, symbol, cols))
        self.ticks, self.bars, self.pending = {}, [], 0
        self._inflight = asyncio.create_task(self._write(batches))

    async def _write(self, batches: list[MarketEventBatch]) -> None:
        async def timescale(bs: Sequence[MarketEventBatch]) -> dict[str, int]:
            await self.timescale.start()
            return await self.timescale.write(bs)

        async def redis(bs: Sequence[MarketEventBatch]) -> dict[str, int]:
            await self.redis.start()
            return await self.redis.write(bs)

        limit = self.settings.sink_retry_max_s
        await asyncio.gather(
            retry_forever("naive-timescale", functools.partial(timescale, batches), limit),
            retry_forever("naive-redis", functools.partial(redis, batches), limit),
        )

    async def close(self) -> None:
        await self.flush()
        if self._inflight is not None:
            await self._inflight
        await self.timescale.close()
        await self.redis.close()


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

    checker = EventChecker(settings)
    sink = BufferedSink(settings)
    books: dict[str, BarBook] = {}
    period_ns = TIMEFRAMES[TIMEFRAME] * NS_PER_S
    grace_ns = settings.bar_grace_ms * 1_000_000
    horizon = settings.bar_correction_horizon_min
    last_seen = [time.monotonic()]

    async def emit(key: str, bars: list[Bar]) -> None:
        venue, _, symbol = key.partition(":")
        cols = bars_to_columns(bars)
        cols["ts_recv"] = np.full(len(bars), time.time_ns(), dtype=np.int64)
        batch = MarketEventBatch.from_columns(Kind.BAR, venue, symbol, cols, timeframe=TIMEFRAME)
        await bars_out.send(key=key.encode(), value=batch.encode(bars_out=time.time_ns()))
        sink.add_bars(batch)

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
            reason = checker.reason(doc, now) if doc is not None else "malformed_json"
            if reason is not None:
                ev = stream.current_event
                msg = ev.message if ev is not None else None
                source = (msg.topic, msg.partition, msg.offset) if msg is not None else None
                await dlq.send(
                    key=ev.key if ev is not None else None,
                    value=dead_letter(
                        stage=STAGE,
                        reason=reason,
                        source=source,
                        event=doc if isinstance(doc, dict) else None,
                        original=None if isinstance(doc, dict) else bytes(value),
                    ),
                )
                continue
            venue, symbol = doc["venue"], doc["symbol"]
            key = f"{venue}:{symbol}"
            book = books.get(key)
            if book is None:
                book = books[key] = BarBook(period_ns=period_ns, grace_ns=grace_ns, horizon=horizon)
            ts, price, size = doc["ts_event"], float(doc["price"]), float(doc["size"])
            corrections = add_trade(book, ts, price, size, now)
            closed = book.close_due(None) + corrections
            if closed:
                await emit(key, closed)
            seq = doc.get("seq")
            row = [ts, doc["ts_recv"], price, size, doc.get("side") or 0, doc["trade_id"]]
            row.append(-1 if seq is None else seq)
            sink.add_tick(venue, symbol, row)
            if sink.pending >= flush_records:
                await sink.flush()

    @app.timer(flush_ms / 1000, name="naive-flush")
    async def flush_due() -> None:
        if sink.pending and time.monotonic() - sink.since >= flush_ms / 1000:
            await sink.flush()

    @app.timer(1.0, name="naive-close-idle")
    async def close_idle() -> None:
        """With the stream quiet for a second, bars close on wall time (as `agents.bars`)."""
        if time.monotonic() - last_seen[0] < 1.0:
            return
        for key, book in list(books.items()):
            closed = book.close_due(time.time_ns())
            if closed:
                await emit(key, closed)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def close(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
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
