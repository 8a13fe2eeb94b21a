"""Replay a time range of the live input topic into a namespace, for backtests (DESIGN §8).

`sepstream replay --from T --to T --namespace NS` reads the events of [from, to) from the
input topic of the current settings (live: un-namespaced) and republishes them, record by
record, into NS's own input topic, where a worker running with namespace NS (started here
as a child) processes them with its own consumer group, PostgreSQL schema and Redis key
prefix. Nothing is ever written under the live names: `assert_isolated` checks that first.

Locating the range. Each partition is read from the first record whose timestamp is
≥ ``from − warmup − slack`` to the first record whose timestamp is ≥ ``to + lead-out +
slack`` (or its end). Offsets come from the broker's ListOffsets-by-time
(`offsets_for_times`), but every answer is checked against the log — the record at the
answer must be at or past the time and the one before it earlier — because the dev broker
(Tansu 0.6) answers offset 0 for every time. An answer that fails the check is replaced by a
bisection over fetched record timestamps (`OffsetLocator`); the summary says which was used.
Record timestamps are the index, event times decide: each record is decoded and only its
events with ``from − warmup ≤ ts_event < to + lead-out`` are republished (a record wholly
inside keeps its original bytes; an edge record is cut). This assumes a record's timestamp is
at or after its events' times and that timestamps within a partition are out of order by
less than `slack` — true for records stamped when produced by a live collector, and for
records stamped with their batch's latest event time. Records imported long after their
events (CSV, backfill) carry the import time and are found at that time, not by event time.

Warm-up and lead-out. The events of `warmup` before `from` are replayed too, so that
windowed outputs (damping windows, SMAs, Bollinger bands) at the start of the range see the
same bars as live; the default is one damping window of 1m bars. The events of the bar
grace after `to` are replayed so that the last bars of the range close by event time, as
they did live (bars starting at or after `to` are partial and never verified). An instrument
with no such event closes its last bars by the worker's idle timer; the replay waits for it.

Pacing: `speed=None` sends as fast as possible; `speed=N` sends at N× real time by the
record timestamps (records of all partitions are merged in timestamp order either way).
"""

from __future__ import annotations

import asyncio
import math
import socket
import sys
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from schemas.batch import CodecError, MarketEventBatch, decode_batch
from schemas.ddl import check_ident
from schemas.events import NS_PER_S
from streams.backtest.verify import verify
from streams.kafka import fetchwait
from streams.kafka.admin import (
    count_events,
    dead_letter_reasons,
    end_offsets,
    ensure_topics,
    group_lag,
    true_end_offsets,
)
from streams.kafka.clients import kafka_client_kwargs, start_client, stop_consumer
from streams.model.library import load_latest, parse_since, publish
from streams.ops.services import table_counts
from streams.settings import Settings
from streams.stores.connections import pg_connect
from streams.topics import TOPIC_NAMES, hot_topics
from streams.worker_process import WorkerProcess

log = structlog.get_logger(__name__)

INPUT_TOPICS: Final = (TOPIC_NAMES["trades"],)  # what collectors write: the pipeline's input
MS: Final = 1_000_000  # ns per ms
DEFAULT_SLACK_NS: Final = 120 * NS_PER_S
REPO: Final = Path(__file__).resolve().parents[1]


class IsolationError(RuntimeError):
    """The replay target would share a topic, schema, key prefix or group with the source."""


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ReplayRange:
    """What to replay, in event time (ns since the epoch, UTC)."""

    start_ns: int  # --from
    end_ns: int  # --to (exclusive)
    warmup_ns: int = 0  # events this long before --from are replayed too
    leadout_ns: int = 0  # events this long after --to are replayed too (bars close on time)
    symbols: frozenset[str] = frozenset()  # empty: every symbol

    def __post_init__(self) -> None:
        if self.end_ns <= self.start_ns:
            raise ValueError("--to must be after --from")
        if self.warmup_ns < 0 or self.leadout_ns < 0:
            raise ValueError("warm-up and lead-out must not be negative")

    @property
    def data_start_ns(self) -> int:
        """The first event time replayed."""
        return self.start_ns - self.warmup_ns

    @property
    def data_end_ns(self) -> int:
        """The first event time not replayed."""
        return self.end_ns + self.leadout_ns

    def wants(self, symbol: str, venue: str) -> bool:
        return not self.symbols or symbol in self.symbols or f"{venue}:{symbol}" in self.symbols


def parse_time(text: str) -> int:
    """ISO-8601 (UTC unless an offset is given) or 7d / 12h / 30m ago → ns since the epoch."""
    moment = parse_since(text)
    return int(moment.timestamp()) * NS_PER_S + moment.microsecond * 1000


def parse_duration(text: str) -> int:
    """`90m`, `2h`, `45s`, `0` → ns."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text == "0":
        return 0
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"not a duration like 90m, 2h or 45s: {text!r}")
    return int(text[:-1]) * units[text[-1]] * NS_PER_S


def parse_speed(text: str) -> float | None:
    """`max` → None (as fast as possible); `N` → N× real time (N > 0)."""
    if text.strip().lower() == "max":
        return None
    speed = float(text)
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be 'max' or a number > 0, got {text!r}")
    return speed


def default_warmup_ns(settings: Settings) -> int:
    """One damping window of 1m bars: enough for every 1m signal, SMA and band in the range."""
    return settings.damping_window * 60 * NS_PER_S


def default_leadout_ns(settings: Settings) -> int:
    """The bar grace plus a minute: an instrument trading then closes its last bars on time."""
    return settings.bar_grace_ms * MS + 60 * NS_PER_S


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def target_settings(source: Settings, namespace: str) -> Settings:
    """The settings of the replay's worker: `source` moved into `namespace`.

    Validation keeps its rules except the age limit (a backtest replays old data), and the
    worker's web server gets a free port so it never collides with a live worker's.
    """
    check_ident(namespace)
    target = source.replace(
        namespace=namespace,
        max_age_s=0,
        web_port=_free_port(source.web_host),
    )
    assert_isolated(source, target)
    return target


def assert_isolated(source: Settings, target: Settings) -> None:
    """A backtest never writes into live tables, keys, topics or offsets: refuse if it could."""
    problems = []
    if not target.namespace:
        problems.append("the replay namespace is empty (that is the live namespace)")
    if target.pg_schema in {source.pg_schema, "public"}:
        problems.append(f"PostgreSQL schema {target.pg_schema!r} is the source's or public")
    if target.redis_prefix == source.redis_prefix:
        problems.append(f"Redis prefix {target.redis_prefix!r} is the source's")
    if target.group_id == source.group_id:
        problems.append(f"consumer group {target.group_id!r} is the source's")
    shared = set(hot_topics(source).values()) & set(hot_topics(target).values())
    if shared:
        problems.append(f"topics {sorted(shared)} are the source's")
    if problems:
        raise IsolationError("; ".join(problems))


# ------------------------------------------------------------------ locating the range


class OffsetLocator:
    """Offset of the first record at or after a time, per partition, checked against the log."""

    def __init__(self, bootstrap: str, **client: Any) -> None:
        self._bootstrap = bootstrap
        self._client = client
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, **client
        )
        self.bisected = 0  # lookups the broker answered wrongly
        self.probes = 0  # records fetched to check or bisect

    async def __aenter__(self) -> OffsetLocator:
        await start_client(self._consumer)
        fetchwait.adapt(self._consumer, "replay-locate")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_consumer(self._consumer)

    async def bounds(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """(first offset, log end) per partition; the end from a fetch's high-water mark."""
        begin = await self._consumer.beginning_offsets(list(tps))
        end = await true_end_offsets(self._bootstrap, tps, **self._client)
        return {tp: (int(begin[tp]), end[tp]) for tp in tps}

    async def timestamp_at(self, tp: TopicPartition, offset: int) -> tuple[int, int] | None:
        """(offset, timestamp ms) of the first record at or after `offset`, None past the end."""
        self.probes += 1
        self._consumer.assign([tp])
        self._consumer.seek(tp, offset)
        for _ in range(20):
            got = await self._consumer.getmany(tp, timeout_ms=250, max_records=1)
            records = got.get(tp, [])
            if records:
                return records[0].offset, int(records[0].timestamp)
            highwater = self._consumer.highwater(tp)
            if highwater is not None and offset >= highwater:
                return None
        return None

    async def offset_for_time(
        self, tp: TopicPartition, ts_ms: int, first: int, end: int
    ) -> tuple[int, str]:
        """The first offset whose record timestamp is ≥ `ts_ms` (`end` if none), and how found."""
        if end <= first:
            return end, "empty"
        answer = (await self._consumer.offsets_for_times({tp: ts_ms})).get(tp)
        if await self._plausible(tp, ts_ms, first, end, answer.offset if answer else None):
            return (answer.offset if answer else end), "broker"
        self.bisected += 1
        return await self._bisect(tp, ts_ms, first, end), "bisection"

    async def _plausible(
        self, tp: TopicPartition, ts_ms: int, first: int, end: int, offset: int | None
    ) -> bool:
        if offset is None:  # "no record at or after": then the last one must be earlier
            last = await self.timestamp_at(tp, end - 1)
            return last is None or last[1] < ts_ms
        if not first <= offset <= end:
            return False
        if offset < end:
            at = await self.timestamp_at(tp, offset)
            if at is None or at[1] < ts_ms:
                return False
        if offset > first:
            before = await self.timestamp_at(tp, offset - 1)
            if before is None or before[0] != offset - 1 or before[1] >= ts_ms:
                return False
        return True

    async def _bisect(self, tp: TopicPartition, ts_ms: int, first: int, end: int) -> int:
        """Smallest offset in [first, end] whose timestamp is ≥ ts_ms (timestamps ~sorted)."""
        lo, hi = first, end
        while lo < hi:
            mid = (lo + hi) // 2
            at = await self.timestamp_at(tp, mid)
            if at is None or at[1] >= ts_ms:
                hi = mid
            else:
                lo = max(mid, at[0]) + 1  # a compacted hole: skip to the record found
        return lo


@dataclass(frozen=True)
class Span:
    """The offsets [start, stop) of one source partition that hold the range."""

    tp: TopicPartition
    start: int
    stop: int
    method: str


async def locate(
    source: Settings, rng: ReplayRange, slack_ns: int = DEFAULT_SLACK_NS
) -> tuple[list[Span], dict[str, int]]:
    """The spans to read, and counters of how offsets were found (broker or bisection)."""
    tps = [
        TopicPartition(source.topic(name), p)
        for name in INPUT_TOPICS
        for p in range(source.partitions)
    ]
    lo_ms = (rng.data_start_ns - slack_ns) // MS
    hi_ms = -(-(rng.data_end_ns + slack_ns) // MS)
    methods: dict[str, int] = defaultdict(int)
    spans = []
    async with OffsetLocator(source.kafka_bootstrap, **kafka_client_kwargs(source)) as locator:
        for tp, (first, end) in (await locator.bounds(tps)).items():
            start, how_start = await locator.offset_for_time(tp, lo_ms, first, end)
            stop, how_stop = await locator.offset_for_time(tp, hi_ms, start, end)
            methods[how_start] += 1
            methods[how_stop] += 1
            spans.append(Span(tp, start, max(start, stop), how_start))
        methods["probes"] = locator.probes
    if methods.get("bisection"):
        log.info(
            "the broker's offsets_for_times disagreed with the log; offsets found by bisection",
            lookups=methods["bisection"],
            probes=methods["probes"],
        )
    return spans, dict(methods)


# ------------------------------------------------------------------- reading, merged


async def read_merged(
    bootstrap: str, spans: Sequence[Span], idle_timeout_s: float = 10.0, **client: Any
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of the spans, merged across partitions in timestamp order.

    Order within a partition is kept (only heads are compared). A partition that yields
    nothing for `idle_timeout_s` before its stop (records deleted meanwhile) is ended.
    """
    todo = {s.tp: s for s in spans if s.stop > s.start}
    if not todo:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4_194_304,
        **client,
    )
    try:
        await start_client(consumer)
        fetchwait.adapt(consumer, "replay-read")  # history: a backlog by definition
        consumer.assign(list(todo))
        for tp, span in todo.items():
            consumer.seek(tp, span.start)
        buffers: dict[TopicPartition, deque[ConsumerRecord[bytes, bytes]]] = {
            tp: deque() for tp in todo
        }
        active = set(todo)
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while active or any(buffers.values()):
            hungry = [tp for tp in active if not buffers[tp]]
            if hungry:
                got = await consumer.getmany(*hungry, timeout_ms=200, max_records=2000)
                for tp, records in got.items():
                    stop = todo[tp].stop
                    buffers[tp].extend(r for r in records if r.offset < stop)
                    if records:
                        last_progress = loop.time()
                        if records[-1].offset >= stop - 1:
                            active.discard(tp)
                if loop.time() - last_progress > idle_timeout_s:
                    for tp in hungry:
                        log.warning("partition ended early: no records", partition=str(tp))
                        active.discard(tp)
                if any(not buffers[tp] for tp in active):
                    continue
            heads = [(buf[0].timestamp, tp.partition, tp) for tp, buf in buffers.items() if buf]
            if not heads:
                continue
            _, _, tp = min(heads)
            yield buffers[tp].popleft()
    finally:
        await stop_consumer(consumer)


def cut_to_range(
    value: bytes, rng: ReplayRange
) -> tuple[bytes | None, MarketEventBatch | None, int]:
    """The record to republish (None: nothing of it is wanted), its batch, its event count.

    Undecodable records are republished as they are when their timestamp is in the range
    (the namespace's validate dead-letters them exactly as live did); the caller decides.
    """
    try:
        batch = decode_batch(value)
    except CodecError:
        return value, None, 1
    if not rng.wants(batch.symbol, batch.venue):
        return None, batch, 0
    ts = batch.cols["ts_event"]
    inside = (ts >= rng.data_start_ns) & (ts < rng.data_end_ns)
    kept = int(inside.sum())
    if kept == 0:
        return None, batch, 0
    if kept == len(batch) or batch.bad_type is not None:
        return value, batch, len(batch)  # whole (bad-typed events are not re-encodable)
    part = batch.select(np.flatnonzero(inside))
    return part.encode(), part, kept


# ----------------------------------------------------------------------- the summary


@dataclass
class TopicCount:
    records_read: int = 0
    records_replayed: int = 0
    events_replayed: int = 0
    undecodable: int = 0


@dataclass
class ReplaySummary:
    source_namespace: str
    namespace: str
    start: str
    end: str
    data_start: str
    data_end: str
    symbols: list[str]
    speed: str
    offset_lookup: dict[str, int]
    topics: dict[str, TopicCount]
    instruments: int
    publish_seconds: float
    elapsed_seconds: float
    records_per_s: float
    events_per_s: float
    complete: bool
    accepted: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    worker_log: str = ""
    verify: dict[str, Any] | None = None

    @property
    def events_replayed(self) -> int:
        return sum(t.events_replayed for t in self.topics.values())

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["events_replayed"] = self.events_replayed
        return doc


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS_PER_S, UTC).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------ the replay


@dataclass
class _Tracker:
    """Per instrument: the latest event time sent and when (for the last bars' close)."""

    last_event: dict[str, int] = field(default_factory=dict)

    def saw(self, batch: MarketEventBatch) -> None:
        if len(batch):
            key = batch.key
            latest = int(batch.cols["ts_event"].max())
            self.last_event[key] = max(latest, self.last_event.get(key, latest))

    def idle_close_s(self, end_ns: int, grace_ns: int) -> float:
        """Wall seconds an idle worker needs to close every bar ending by `end_ns`.

        A quiet instrument's watermark is its latest event plus the wall time since, minus
        the grace (kernels.bars), so the bar ending at `end_ns` closes that long after.
        """
        need = [max(0, end_ns + grace_ns - t) for t in self.last_event.values()]
        return max(need, default=0) / NS_PER_S


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} rec/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not enabled,
        transient=False,
    )


async def copy_library(source: Settings, target: Settings) -> str | None:
    """Publish the source's newest stored path library in the namespace (same model as live)."""
    conn = await pg_connect(source, "reader")
    try:
        library = await load_latest(conn, source.pg_schema)
    finally:
        await conn.close()
    if library is None:
        return None
    await publish(target, library)
    return library.version


async def republish(
    source: Settings,
    target: Settings,
    rng: ReplayRange,
    spans: Sequence[Span],
    *,
    speed: float | None,
    tracker: _Tracker,
    on_record: Callable[[int], None] = lambda _: None,
) -> dict[str, TopicCount]:
    """Read the spans, cut records to the range, send them to the namespace's topics."""
    counts: dict[str, TopicCount] = {source.topic(name): TopicCount() for name in INPUT_TOPICS}
    target_of = {source.topic(name): target.topic(name) for name in INPUT_TOPICS}
    producer = AIOKafkaProducer(
        bootstrap_servers=target.kafka_bootstrap,
        acks="all",
        enable_idempotence=False,  # not offered by every broker; the sinks are idempotent
        linger_ms=5,
        max_batch_size=1_048_576,
        max_request_size=4_194_304,
        **kafka_client_kwargs(target),
    )
    failures: list[BaseException] = []
    pending: set[asyncio.Future[Any]] = set()

    def delivered(fut: asyncio.Future[Any]) -> None:
        pending.discard(fut)
        if fut.cancelled():
            failures.append(asyncio.CancelledError("delivery cancelled"))
        elif fut.exception() is not None:
            failures.append(fut.exception())  # type: ignore[arg-type]

    loop = asyncio.get_running_loop()
    began_wall: float | None = None
    began_ts = 0
    try:
        await start_client(producer)
        async for rec in read_merged(source.kafka_bootstrap, spans, **kafka_client_kwargs(source)):
            count = counts[rec.topic]
            count.records_read += 1
            on_record(1)
            value, batch, events = cut_to_range(rec.value or b"", rng)
            if value is None:
                continue
            if batch is None:  # undecodable: keep it when its record time is in range
                if not rng.data_start_ns // MS <= rec.timestamp < rng.data_end_ns // MS:
                    continue
                count.undecodable += 1
            else:
                tracker.saw(batch)
            if speed is not None:
                if began_wall is None:
                    began_wall, began_ts = loop.time(), rec.timestamp
                due = began_wall + (rec.timestamp - began_ts) / 1000 / speed
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
            fut = await producer.send(
                target_of[rec.topic],
                value=value,
                key=rec.key,
                timestamp_ms=rec.timestamp,
                headers=list(rec.headers) or None,
            )
            pending.add(fut)
            fut.add_done_callback(delivered)
            count.records_replayed += 1
            count.events_replayed += events
        await producer.flush()
        if pending:
            await asyncio.wait(list(pending))
    finally:
        await producer.stop()
    if failures:
        raise RuntimeError(f"{len(failures)} replayed records not delivered: {failures[0]!r}")
    return counts


async def wait_settled(
    target: Settings,
    start: dict[TopicPartition, int],
    *,
    events: int,
    tracker: _Tracker,
    rng: ReplayRange,
    timeout_s: float,
) -> tuple[bool, int, dict[str, int]]:
    """Until every replayed event is accepted or dead-lettered, the group has no lag, and
    the bars ending by --to have had time to close. Returns (settled, accepted, reasons)."""
    names = hot_topics(target)
    watched = [t for n, t in names.items() if n != "dlq"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    accepted, reasons = 0, {}
    caught_up_at: float | None = None
    grace_ns = target.bar_grace_ms * MS
    while loop.time() < deadline:
        end = await end_offsets(target, list(names.values()))
        accepted = await count_events(target, names["events"], start, end)
        reasons = dict(await dead_letter_reasons(target, start, end))
        rejected = sum(v for k, v in reasons.items() if k.startswith("validate:"))
        lag = sum(x.messages for x in await group_lag(target, target.group_id, watched))
        if accepted + rejected >= events and lag == 0:
            now = loop.time()
            caught_up_at = caught_up_at or now
            # the idle timer (1 s period) closes the last bars; then their outputs flow on
            close_by = caught_up_at + tracker.idle_close_s(rng.end_ns, grace_ns) + 1.5
            if now >= close_by + target.sink_linger_ms / 1000 + 1.0:
                return True, accepted, reasons
        else:
            caught_up_at = None
        await asyncio.sleep(0.3)
    return False, accepted, reasons


async def run_replay(
    source: Settings,
    namespace: str,
    rng: ReplayRange,
    *,
    speed: float | None = None,
    progress: bool = True,
    start_worker: bool = True,
    log_path: Path | None = None,
    timeout_s: float = 600.0,
    slack_ns: int = DEFAULT_SLACK_NS,
) -> ReplaySummary:
    """Replay `rng` from `source`'s input topic into `namespace`, processed by a worker."""

    target = target_settings(source, namespace)
    t0 = time.perf_counter()
    await ensure_topics(target)
    library = await copy_library(source, target)
    if library:
        log.info("replaying with the live path library", version=library)
    names = hot_topics(target)
    start = await end_offsets(target, list(names.values()))
    spans, methods = await locate(source, rng, slack_ns)
    total = sum(s.stop - s.start for s in spans)
    log.info(
        "replay range located",
        namespace=namespace,
        records=total,
        spans={str(s.tp): (s.start, s.stop) for s in spans},
        lookup=methods,
    )
    log_path = log_path or REPO / ".dev" / "logs" / f"replay-{namespace}-worker.log"
    worker = WorkerProcess(target, log_path).start() if start_worker else None
    tracker = _Tracker()
    try:
        with _progress(progress) as bar:
            task = bar.add_task(f"replay → {namespace}", total=total, rate="0")
            began = time.perf_counter()

            def advance(n: int) -> None:
                done = bar.tasks[task].completed + n
                rate = done / max(time.perf_counter() - began, 1e-6)
                bar.update(task, advance=n, rate=f"{rate:,.0f}")

            counts = await republish(
                source, target, rng, spans, speed=speed, tracker=tracker, on_record=advance
            )
        publish_s = time.perf_counter() - t0
        events = sum(c.events_replayed for c in counts.values())
        log.info("replayed", events=events, seconds=round(publish_s, 2))
        settled, accepted, reasons = (
            await wait_settled(
                target, start, events=events, tracker=tracker, rng=rng, timeout_s=timeout_s
            )
            if worker is not None
            else (False, 0, {})
        )
        if worker is not None and not worker.running:
            log.error("the replay worker exited", returncode=worker.proc and worker.proc.returncode)
            settled = False
    finally:
        if worker is not None:
            worker.stop()
    elapsed = time.perf_counter() - t0
    replayed = sum(c.records_replayed for c in counts.values())
    return ReplaySummary(
        source_namespace=source.namespace,
        namespace=namespace,
        start=iso(rng.start_ns),
        end=iso(rng.end_ns),
        data_start=iso(rng.data_start_ns),
        data_end=iso(rng.data_end_ns),
        symbols=sorted(rng.symbols),
        speed="max" if speed is None else f"{speed:g}x",
        offset_lookup=methods,
        topics=counts,
        instruments=len(tracker.last_event),
        publish_seconds=round(publish_s, 3),
        elapsed_seconds=round(elapsed, 3),
        records_per_s=round(replayed / publish_s, 1) if publish_s > 0 else 0.0,
        events_per_s=round(events / publish_s, 1) if publish_s > 0 else 0.0,
        complete=settled,
        accepted=accepted,
        dead_lettered=sum(v for k, v in reasons.items() if k.startswith("validate:")),
        dead_letter_reasons=reasons,
        rows=await table_counts(target),
        worker_log=str(log_path) if worker is not None else "",
    )


def symbols_from_cli(text: str | None) -> frozenset[str]:
    """`BTC-USDT,sim_kraken:XRP-EUR` → the set (symbol, or venue:symbol)."""
    if not text:
        return frozenset()
    return frozenset(s.strip() for s in text.split(",") if s.strip())


async def replay_and_verify(
    source: Settings,
    namespace: str,
    rng: ReplayRange,
    *,
    speed: float | None,
    verify_after: bool,
    progress: bool = True,
    timeout_s: float = 600.0,
) -> ReplaySummary:
    """The whole `sepstream replay`: replay, then (optionally) compare with the live tables."""

    summary = await run_replay(
        source, namespace, rng, speed=speed, progress=progress, timeout_s=timeout_s
    )
    if verify_after:
        report = await verify(
            source,
            source.replace(namespace=namespace),
            start_ns=rng.start_ns,
            end_ns=rng.end_ns,
            data_start_ns=rng.data_start_ns,
            symbols=rng.symbols,
        )
        summary.verify = report.as_dict()
    return summary


def succeeded(summary: ReplaySummary) -> bool:
    """Complete, and when verified, without a difference (the command's exit status)."""
    return summary.complete and (summary.verify is None or summary.verify["difference_count"] == 0)


def render(summary: ReplaySummary, console: Console) -> None:
    """The human-readable summary (and every difference found by --verify)."""

    s = summary
    table = Table(title=f"sepstream replay → namespace {s.namespace}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("range", f"{s.start} → {s.end}")
    table.add_row("replayed events", f"{s.data_start} → {s.data_end} (warm-up, lead-out)")
    table.add_row("symbols", ", ".join(s.symbols) or "all")
    table.add_row("speed", s.speed)
    table.add_row("offsets found by", ", ".join(f"{k} {v}" for k, v in s.offset_lookup.items()))
    for topic, c in s.topics.items():
        table.add_row(f"{topic} records read", f"{c.records_read:,}")
        table.add_row(f"{topic} records replayed", f"{c.records_replayed:,}")
        table.add_row(f"{topic} events replayed", f"{c.events_replayed:,}")
        if c.undecodable:
            table.add_row(f"{topic} undecodable (replayed)", f"{c.undecodable:,}")
    table.add_row("accepted / dead-lettered", f"{s.accepted:,} / {s.dead_lettered:,}")
    for name, count in s.rows.items():
        if count:
            table.add_row(f"rows in {s.namespace}.{name}", f"{count:,}")
    table.add_row("publish time", f"{s.publish_seconds:.2f} s")
    table.add_row("elapsed", f"{s.elapsed_seconds:.2f} s")
    table.add_row("rate", f"{s.records_per_s:,.0f} records/s, {s.events_per_s:,.0f} events/s")
    table.add_row("complete", "[green]yes[/]" if s.complete else "[red]NO[/] (see worker log)")
    if s.verify is not None:
        v = s.verify
        for name, count in v["compared_rows"].items():
            table.add_row(f"verified {name} rows", f"{count:,}")
        for name, count in sorted(v["not_compared"].items()):
            table.add_row(f"  not comparable {name}", f"{count:,}")
        n = v["difference_count"]
        table.add_row("differences", f"[green]{n}[/]" if n == 0 else f"[red]{n:,}[/]")
    console.print(table)
    if s.verify is not None and s.verify["differences"]:
        diffs = Table(title="differences (live vs replay)")
        for name in ("table", "venue", "symbol", "timeframe", "ts", "column", "live", "replay"):
            diffs.add_column(name)
        for d in s.verify["differences"]:
            diffs.add_row(*(str(d[k]) for k in ("table", "venue", "symbol", "timeframe", "ts")),
                          str(d["column"]), repr(d["live"]), repr(d["replay"]))  # fmt: skip
        console.print(diffs)
    if s.worker_log:
        console.print(f"worker log: {s.worker_log}")
