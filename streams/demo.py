"""The main job on embedded defaults: dev services, a worker, a source, then a reconciliation.

It proves the whole flow on every run: every produced event is either accepted (forwarded
by validate) or dead-lettered, the worker's group has no lag left, and the summary shows
what reached TimescaleDB and Redis.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from schemas.ddl import check_ident
from streams.kafka.admin import (
    count_events,
    dead_letter_reasons,
    end_offsets,
    ensure_topics,
    group_lag,
)
from streams.kafka.producer import BatchingProducer
from streams.ops.services import redis_keys, table_counts
from streams.settings import Settings
from streams.sources import csvfile, synthetic
from streams.stores.connections import pg_connect, redis_client
from streams.stores.provision import provision
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess

log = structlog.get_logger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Summary:
    namespace: str
    source: str
    produced: int
    accepted: int
    dead_lettered: int
    dead_letter_reasons: dict[str, int]
    reconciled: bool
    produce_seconds: float
    pipeline_seconds: float
    events_per_s: float
    rows: dict[str, int]
    redis_keys: dict[str, int]
    lag_messages: int
    worker_log: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def start_services() -> None:
    script = REPO / "deploy" / "dev.sh"
    if not script.exists():
        raise RuntimeError(f"{script} not found: start Kafka, PostgreSQL and Redis yourself")
    subprocess.run(["bash", str(script), "up"], check=True, stdout=subprocess.DEVNULL)


async def produce(settings: Settings, source: str, events: int, seed: int) -> int:

    async with BatchingProducer(settings, hot_topics(settings)["trades"]) as producer:
        if source == "synthetic":
            start = synthetic.default_window(events, 100.0, time.time_ns())
            return await synthetic.produce(producer, seed, events, start_ns=start)
        if source.startswith("csv:"):
            return await csvfile.produce(producer, Path(source[4:]))
        raise ValueError(f"unknown source {source!r} (synthetic | csv:PATH)")


@dataclass
class Progress:
    accepted: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    lag: int = -1
    first_seen: float | None = None  # perf_counter when the first event came through
    reconciled_at: float | None = None  # perf_counter when every event was accounted for

    @property
    def rejected(self) -> int:
        return sum(v for k, v in self.reasons.items() if k.startswith("validate:"))


async def wait_reconciled(
    settings: Settings, start: dict[Any, int], produced: int, timeout_s: float
) -> Progress:
    """Poll until accepted + dead-lettered == produced and the group has no lag left."""
    names = hot_topics(settings)
    # every topic the worker's group consumes, so the last bars, signals and indicators
    # are stored too when this returns
    watched = [topic for name, topic in names.items() if name != "dlq"]
    deadline = time.monotonic() + timeout_s
    p = Progress()
    while time.monotonic() < deadline:
        end = await end_offsets(settings, list(names.values()))
        p.accepted = await count_events(settings, names["events"], start, end)
        p.reasons = dict(await dead_letter_reasons(settings, start, end))
        p.lag = sum(x.messages for x in await group_lag(settings, settings.group_id, watched))
        now = time.perf_counter()
        if p.first_seen is None and p.accepted + p.rejected > 0:
            p.first_seen = now
        if p.accepted + p.rejected == produced and p.lag == 0:
            p.reconciled_at = p.reconciled_at or now
            # Stay settled past the bar grace so the last bars close and are written too.
            if now - p.reconciled_at > settings.bar_grace_ms / 1000 + 3:
                break
        else:
            p.reconciled_at = None
        await asyncio.sleep(0.2)
    return p


async def fresh_namespace(settings: Settings) -> Settings:
    """A namespace of its own for this run, so its numbers are exact and live data untouched.

    Earlier demo runs' tables and keys are dropped; this run's stay for inspection.
    """
    ns = f"demo_{time.strftime('%Y%m%d_%H%M%S', time.gmtime())}"
    conn = await pg_connect(settings)
    try:
        old = await conn.fetch(r"SELECT nspname FROM pg_namespace WHERE nspname LIKE 'demo\_%'")
        for row in old:
            await conn.execute(f"DROP SCHEMA {check_ident(row['nspname'])} CASCADE")
    finally:
        await conn.close()
    client = redis_client(settings)
    try:
        stale = [k async for k in client.scan_iter(match="demo_*:md:*", count=1000)]
        if stale:
            await client.delete(*stale)
    finally:
        await client.aclose()
    return settings.replace(namespace=ns)


async def run_demo(
    settings: Settings, *, source: str, events: int, seed: int, timeout_s: float = 600
) -> Summary:
    if not settings.namespace:
        settings = await fresh_namespace(settings)
    await provision(settings)  # `db-init` as the owner: the worker then runs as the writer
    await ensure_topics(settings)
    names = hot_topics(settings)
    start = await end_offsets(settings, list(names.values()))
    log_path = REPO / ".dev" / "logs" / "demo-worker.log"
    worker = WorkerProcess(settings, log_path).start()
    try:
        t0 = time.perf_counter()
        produced = await produce(settings, source, events, seed)
        produce_s = time.perf_counter() - t0
        log.info("produced", events=produced, seconds=round(produce_s, 2))
        progress = await wait_reconciled(settings, start, produced, timeout_s)
    finally:
        worker.stop()
    # Processing time: from the first event through the worker until all were accounted
    # for (the worker's start-up and group join are not the pipeline's speed).
    done = progress.reconciled_at or time.perf_counter()
    busy = done - (progress.first_seen or t0)
    return Summary(
        namespace=settings.namespace,
        source=source,
        produced=produced,
        accepted=progress.accepted,
        dead_lettered=progress.rejected,
        dead_letter_reasons=progress.reasons,
        reconciled=progress.reconciled_at is not None,
        produce_seconds=round(produce_s, 3),
        pipeline_seconds=round(busy, 3),
        events_per_s=round(produced / busy, 1) if busy > 0 else 0.0,
        rows=await table_counts(settings),
        redis_keys=await redis_keys(settings),
        lag_messages=progress.lag,
        worker_log=str(log_path),
    )
