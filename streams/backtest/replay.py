"""Replay a time range of the live input topic into a namespace, for backtests
(docs/ARCHITECTURE.md#replay).

`sepstream replay --from T --to T --namespace NS` reads the events of [from, to) from the
input topic of the current settings (live: un-namespaced) and republishes them, record by
record, into NS's own input topic, where a worker running with namespace NS (started here
as a child) processes them with its own consumer group, PostgreSQL schema and Redis key
prefix. Nothing is ever written under the live names: `plan.target_settings` checks that
first.

The parts: `plan` (the range, the target namespace, the isolation checks, the cut by event
time), `offsets` (where the range lies in the topic, and reading it back merged in time
order), this module (the run: republish, wait for the worker, verify) and `summary` (what
it reports).

An instrument with no event after --to closes its last bars by the worker's idle timer; the
replay waits for it. Pacing: `speed=None` sends as fast as possible; `speed=N` sends at N×
real time by the record timestamps (records of all partitions are merged in timestamp order
either way).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition

from schemas.batch import MarketEventBatch
from schemas.events import NS_PER_S
from streams.backtest.offsets import DEFAULT_SLACK_NS, INPUT_TOPICS, Span, locate, read_merged
from streams.backtest.plan import (
    MS,
    ReplayRange,
    cut_to_range,
    target_settings,
)
from streams.backtest.summary import (
    ReplaySummary,
    TopicCount,
    iso,
    progress_bar,
)
from streams.backtest.verify import verify
from streams.kafka.admin import (
    count_events,
    dead_letter_reasons,
    end_offsets,
    ensure_topics,
    group_lag,
)
from streams.kafka.clients import kafka_client_kwargs, start_client
from streams.model.library import load_latest, publish
from streams.ops.services import table_counts
from streams.settings import Settings
from streams.stores.connections import pg_connect
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess

# What `sepstream replay` (streams/cli/backtest.py) takes from here, whichever part holds it.

log = structlog.get_logger(__name__)

REPO: Final = Path(__file__).resolve().parents[2]


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
        with progress_bar(progress) as bar:
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
