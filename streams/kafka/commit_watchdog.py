"""Offset commits that never skip a record, around two faust-streaming (0.15.3) defects.

faust-streaming (0.15.3, issue #596): when a worker starts or rebalances while its tables
recover, records already fetched from the input topics can be dropped from Faust's
in-memory queues without being processed or acked. Faust commits only contiguous acked
offsets, so the partition's commits then stop for good and those records wait for the
next restart. Every stage acks in order, so a later record being acked while an earlier
one is not proves the earlier one was dropped. When such a head gap outlives `patience`
checks, the partition is re-read from its committed offset; every stage is idempotent on
redelivery (sinks upsert, bars/damping/indicators skip what their state already holds).

Second defect: Faust checks that head only when the partition has a committed offset other
than 0, and even then lets one missing record through, so on a partition never committed
before it would commit past dropped records. `StrictConsumer` seeds the committed offset
with the start position and commits only from exactly the next offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import faust
import structlog
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.kafka import fetchwait
from streams.kafka.admin import true_end_offsets
from streams.ops.metrics import ASYNCIO_TASKS, PAUSED_PARTITIONS

log = structlog.get_logger(__name__)


def head_gaps(
    acked: Mapping[Any, Iterable[int]],
    committed: Mapping[Any, int | None],
    assigned: Iterable[Any],
) -> dict[Any, tuple[int, int]]:
    """Partitions whose commits are blocked: {tp: (committed, first acked offset)}.

    `committed` is the next offset to read, so the first acked offset must equal it.
    """
    out = {}
    for tp in assigned:
        offsets = list(acked.get(tp, ()))
        start = committed.get(tp)
        if offsets and start is not None and min(offsets) > start:
            out[tp] = (start, min(offsets))
    return out


class ShortWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a configurable, adaptive fetch wait (Faust: fixed 1.5 s).

    A broker answers a fetch that finds no data after at most `fetch_max_wait_ms`; Apache
    Kafka answers early when data arrives, the dev broker (Tansu 0.6) does not, so every
    hop of the pipeline would add up to the full wait (measured: ~3 s ts_recv → Redis at
    2k ticks/s with 1.5 s; tens of ms with 10 ms). A short wait costs only idle requests,
    and it grows while the broker answers empty with a backlog waiting (streams/fetchwait).
    """

    fetch_max_wait_ms: int = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by start()'s Fetcher
        start = consumer.start

        async def start_adaptive() -> None:
            await start()  # creates the consumer's Fetcher
            fetchwait.adapt(consumer, "worker")

        consumer.start = start_adaptive
        return consumer


class StrictConsumer(faust_aiokafka.Consumer):
    """Faust's Kafka consumer, committing only contiguously from the committed offset."""

    def _new_consumer_thread(self) -> ShortWaitConsumerThread:
        return ShortWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        fresh = [tp for tp in self.assignment() if self._committed_offset.get(tp) is None]
        if fresh:
            # Never committed (or committed 0): reading starts at the log start (offset reset
            # "earliest"), so that record must be acked first. Not the current position: the
            # fetcher may already be past records that were dropped.
            for tp, start in (await self.earliest_offsets(*fresh)).items():
                self._committed_offset[tp] = start

    async def highwaters(self, *partitions: Any) -> Mapping[Any, int]:
        """Log ends for table recovery, checked against a fetch's high-water mark: a broker
        that under-reports them (the dev broker does) would otherwise make recovery stop
        before the last changelog entries and restore a stale state."""
        if not partitions:
            return {}
        listed = await super().highwaters(*partitions)
        bootstrap = ",".join(f"{u.host}:{u.port or 9092}" for u in self.app.conf.broker_consumer)
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        # short: a partition that returns nothing within it is empty, as listed
        auth = faust_aiokafka.credentials_to_aiokafka_auth(self.app.conf.broker_credentials)
        true = await true_end_offsets(bootstrap, tps, timeout_s=1.0, **auth)
        return {
            tp: max(int(listed.get(tp) or 0), true[TopicPartition(tp.topic, tp.partition)])
            for tp in partitions
        }

    def _new_offset(self, tp: Any) -> int | None:
        acked, start = self._acked[tp], self._committed_offset[tp]
        if acked and start is not None and not self._gap[tp] and min(acked) > start:
            return None  # an earlier record is not acked: never commit past it
        result: int | None = super()._new_offset(tp)
        return result


def install_strict_consumer(fetch_max_wait_ms: int) -> None:
    """Make Faust's Kafka transport create `StrictConsumer`s (call before creating an app)."""
    faust_aiokafka.Transport.Consumer = StrictConsumer
    ShortWaitConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms


def register(app: faust.App, *, every_s: float = 5.0, patience: int = 3) -> None:
    suspects: dict[Any, tuple[tuple[int, int], int]] = {}

    @app.timer(1.0, name="runtime-gauges")
    async def runtime_gauges() -> None:
        """Leak and back-pressure signals next to the commit checks: live tasks (a leak grows
        them), partitions whose fetching Faust paused because a stream buffer is full."""
        ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
        PAUSED_PARTITIONS.set(len(getattr(app.consumer, "_buffered_partitions", ())))

    @app.timer(every_s, name="commit-watchdog")
    async def watch() -> None:
        consumer = app.consumer
        acked = getattr(consumer, "_acked", None)  # Faust internals, read only
        committed = getattr(consumer, "_committed_offset", None)
        if acked is None or committed is None:
            return
        gaps = head_gaps(acked, committed, consumer.assignment())
        for tp in set(suspects) - set(gaps):
            del suspects[tp]
        for tp, gap in gaps.items():
            seen, count = suspects.get(tp, (gap, 0))
            count = count + 1 if seen == gap else 1
            suspects[tp] = (gap, count)
            if count < patience:
                continue
            log.warning(
                "offset commits blocked by unprocessed records: re-reading the partition",
                topic=tp.topic,
                partition=tp.partition,
                committed=gap[0],
                first_acked=gap[1],
            )
            await consumer.seek(tp, gap[0])
            del suspects[tp]
