"""Where a time range lies in the input topic: offsets found by record time, checked
against the log, and the records of the range read back merged in time order
(docs/ARCHITECTURE.md#replay).

Each partition is read from the first record whose timestamp is ≥ ``from − warmup − slack``
to the first record whose timestamp is ≥ ``to + lead-out + slack`` (or its end). Offsets come
from the broker's ListOffsets-by-time (`offsets_for_times`), but every answer is checked
against the log — the record at the answer must be at or past the time and the one before
it earlier — because the dev broker (Tansu 0.6) answers offset 0 for every time
(docs/ARCHITECTURE.md#broker-caveats). An answer that fails the check is replaced by a
bisection over fetched record timestamps (`OffsetLocator`); the summary says which was used.
Record timestamps are the index; event times decide what is replayed (`plan.cut_to_range`).
This assumes a record's timestamp is at or after its events' times and that timestamps
within a partition are out of order by less than `slack` — true for records stamped when
produced by a live collector, and for records stamped with their batch's latest event time.
Records imported long after their events (CSV, backfill) carry the import time and are found
at that time, not by event time.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from schemas.events import NS_PER_S
from streams.backtest.plan import MS, ReplayRange
from streams.kafka import fetchwait
from streams.kafka.admin import true_end_offsets
from streams.kafka.clients import kafka_client_kwargs, start_client, stop_consumer
from streams.settings import Settings
from streams.topics import TOPIC_NAMES

log = structlog.get_logger(__name__)

INPUT_TOPICS: Final = (TOPIC_NAMES["trades"],)  # what collectors write: the pipeline's input
DEFAULT_SLACK_NS: Final = 120 * NS_PER_S


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
