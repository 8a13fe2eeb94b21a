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

from streams.inspect import (
    count_events,
    dead_letter_reasons,
    end_offsets,
    ensure_topics,
    group_lag,
    hot_topics,
    redis_keys,
    table_counts,
)
from streams.producer import BatchingProducer
from streams.settings import Settings
from streams.worker_process import WorkerProcess

log = structlog.get_logger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Summary:
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
    from streams.sources import csvfile, synthetic

    async with BatchingProducer(settings, settings.topic("md.trades.v1")) as producer:
        if source == "synthetic":
            start = synthetic.default_window(events, 100.0, time.time_ns())
            return await synthetic.produce(producer, seed, events, start_ns=start)
        if source.startswith("csv:"):
            return await csvfile.produce(producer, Path(source[4:]))
        raise ValueError(f"unknown source {source!r} (synthetic | csv:PATH)")


async def wait_reconciled(
    settings: Settings, start: dict[Any, int], produced: int, timeout_s: float
) -> tuple[int, dict[str, int], int]:
    """Poll until accepted + dead-lettered == produced and the group has no lag left."""
    names = hot_topics(settings)
    watched = [names["trades"], names["events"], names["bars"]]
    deadline = time.monotonic() + timeout_s
    settled_since: float | None = None
    accepted, reasons, lag = 0, {}, -1
    while time.monotonic() < deadline:
        end = await end_offsets(settings, list(names.values()))
        accepted = await count_events(settings, names["events"], start, end)
        reasons = dict(await dead_letter_reasons(settings, start, end))
        rejected = sum(v for k, v in reasons.items() if k.startswith("validate:"))
        lag = sum(x.messages for x in await group_lag(settings, settings.group_id, watched))
        if accepted + rejected >= produced and lag == 0:
            # Stay settled past the bar grace so the last bars close and are written too.
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since > settings.bar_grace_ms / 1000 + 3:
                break
        else:
            settled_since = None
        await asyncio.sleep(0.5)
    return accepted, reasons, lag


async def run_demo(
    settings: Settings, *, source: str, events: int, seed: int, timeout_s: float = 600
) -> Summary:
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
        accepted, reasons, lag = await wait_reconciled(settings, start, produced, timeout_s)
        pipeline_s = time.perf_counter() - t0
    finally:
        worker.stop()
    rejected = sum(v for k, v in reasons.items() if k.startswith("validate:"))
    return Summary(
        source=source,
        produced=produced,
        accepted=accepted,
        dead_lettered=rejected,
        dead_letter_reasons=reasons,
        reconciled=accepted + rejected == produced and lag == 0,
        produce_seconds=round(produce_s, 3),
        pipeline_seconds=round(pipeline_s, 3),
        events_per_s=round(produced / pipeline_s, 1) if pipeline_s else 0.0,
        rows=await table_counts(settings),
        redis_keys=await redis_keys(settings),
        lag_messages=lag,
        worker_log=str(log_path),
    )
