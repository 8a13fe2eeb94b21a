"""Soak: steady load at a fixed rate through a real worker for minutes, watching for leaks.

    python -m bench.soak --minutes 10 --rate 1000 --json

A benchmark, not a test (not in CI): it needs the dev services (``bash deploy/dev.sh up``)
and runs for as long as asked. One `WorkerProcess` (``python -m streams.cli worker``: every
agent and sink) in a fresh namespace gets synthetic trades paced at ``--rate`` events/s with
event time ≈ wall time, so bars close, indicators and damping run live; every
``--bad-every-s`` one round of the bad-input corpus (tests/fixtures/bad_input) is mixed in,
so the dead-letter path runs too.

Every ``--sample-s`` it samples the worker: RSS, open fds and inet connections (psutil),
asyncio tasks, paused partitions and sink queue depth (the worker's /metrics), and the
group's lag. The report gives RSS at the end of ``--warmup-s`` (start), at the end and its
maximum, growth in % over the steady part and over its second half (caches fill for
minutes at first; a leak keeps growing), a least-squares slope (MiB/min), the same
start/end/max for fds, connections and tasks, and a final reconciliation: after the load
stops and the lag drains, every accepted tick stored once, and the worker still the same
process. ``--json`` prints one JSON document (samples included) on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import psutil
import structlog

from bench.pipeline import cleanup
from streams.kafka.admin import dead_letter_reasons, end_offsets, ensure_topics, group_lag
from streams.kafka.producer import BatchingProducer
from streams.ops.logs import configure_logging
from streams.settings import Settings
from streams.sources import synthetic
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.fixtures.bad_input import corpus_settings, load

log = structlog.get_logger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Sample:
    t_s: float
    rss_mib: float
    fds: int
    connections: int
    tasks: int
    paused_partitions: int
    sink_buffered: int
    lag: int
    cpu_s: float


def _metrics(settings: Settings) -> dict[str, float]:
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _lag(settings: Settings) -> int:
    names = hot_topics(settings)
    topics = [names["trades"], names["events"], names["bars"]]
    return sum(x.messages for x in await group_lag(settings, settings.group_id, topics))


async def _sample(proc: psutil.Process, settings: Settings, t0: float) -> Sample:
    m = await asyncio.to_thread(_metrics, settings)
    with proc.oneshot():
        rss = proc.memory_info().rss
        fds = proc.num_fds()
        conns = len(proc.net_connections(kind="inet"))
        cpu = proc.cpu_times()
    return Sample(
        t_s=round(time.monotonic() - t0, 1),
        rss_mib=round(rss / 2**20, 1),
        fds=fds,
        connections=conns,
        tasks=int(m.get("sepstream_asyncio_tasks", -1)),
        paused_partitions=int(m.get("sepstream_paused_partitions", -1)),
        sink_buffered=int(
            sum(v for k, v in m.items() if k.startswith("sepstream_sink_buffered_records{"))
        ),
        lag=await _lag(settings),
        cpu_s=round(cpu.user + cpu.system, 1),
    )


def _trend(samples: list[Sample], field: str) -> dict[str, float]:
    values = [float(getattr(s, field)) for s in samples]
    return {"start": values[0], "end": values[-1], "max": max(values), "min": min(values)}


def summarize(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    """Start = the first sample after the warm-up; growth and slope over the steady part."""
    steady = [s for s in samples if s.t_s >= warmup_s] or samples
    rss = _trend(steady, "rss_mib")
    t = np.array([s.t_s for s in steady])
    y = np.array([s.rss_mib for s in steady])
    slope = float(np.polyfit(t / 60, y, 1)[0]) if len(steady) >= 3 else float("nan")
    # bounded caches fill for minutes at first: a leak keeps growing in the second half too
    mid = steady[len(steady) // 2].rss_mib
    return {
        "rss_mib": {
            **rss,
            "growth_pct": round(100 * (rss["end"] - rss["start"]) / rss["start"], 2),
            "second_half_growth_pct": round(100 * (rss["end"] - mid) / mid, 2),
            "max_over_start_pct": round(100 * (rss["max"] - rss["start"]) / rss["start"], 2),
            "slope_mib_per_min": round(slope, 3),
            "before_warmup": samples[0].rss_mib,
        },
        "fds": _trend(steady, "fds"),
        "connections": _trend(steady, "connections"),
        "asyncio_tasks": _trend(steady, "tasks"),
        "lag_max": max(s.lag for s in steady),
        "paused_partitions_max": max(s.paused_partitions for s in steady),
        "worker_cpu_share": round(
            (steady[-1].cpu_s - steady[0].cpu_s) / max(1e-9, steady[-1].t_s - steady[0].t_s), 3
        ),
    }


async def _inject_corpus(
    settings: Settings, topic: str, every_s: float, stop: asyncio.Event
) -> tuple[int, Counter[str]]:
    """One corpus round every `every_s`; returns (accepted trades, expected dead letters)."""
    accepted, dead = 0, Counter[str]()
    rounds = 0
    async with BatchingProducer(settings, topic) as producer:
        while not stop.is_set():
            rounds += 1
            for case in load(time.time_ns(), id_base=rounds * 10**7):
                for key, value in case.records:
                    await producer.send(key, value)
                accepted += case.accepted
                dead.update(k for k, n in case.dead.items() for _ in range(n))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
    return accepted, dead


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    ns = f"soak{uuid.uuid4().hex[:8]}"
    base = Settings.from_env(
        None,
        namespace=ns,
        app_id=f"sepstream-{ns}",
        partitions=args.partitions,
        web_port=args.web_port or _free_port(),
        session_timeout_s=6.0,
        rebalance_timeout_s=4.0,
    )
    instruments = synthetic.DEFAULT_INSTRUMENTS
    settings = corpus_settings(base, tuple(i.symbol for i in instruments))
    await ensure_topics(settings)
    names = hot_topics(settings)
    start_offsets = await end_offsets(settings, list(names.values()))
    log_dir = Path(args.log_dir)
    worker = WorkerProcess(settings, log_dir / f"{ns}-soak-worker.log").start()
    assert worker.proc is not None
    pid = worker.proc.pid
    proc = psutil.Process(pid)
    duration_s = args.minutes * 60
    events = int(args.rate * duration_s)
    # event time ≈ wall time; a minute back so the burstiness of the synthetic market
    # never runs it ahead of the clock (future_timestamp)
    start_ns = time.time_ns() - 60 * 10**9
    stop = asyncio.Event()
    samples: list[Sample] = []
    pg = await asyncpg.connect(settings.dsn_with_password())
    try:
        for _ in range(120):  # the worker's web server is up
            try:
                await asyncio.to_thread(_metrics, settings)
                break
            except OSError:
                await asyncio.sleep(0.5)
        t0 = time.monotonic()

        async def produce() -> int:
            async with BatchingProducer(settings, names["trades"]) as producer:
                return await synthetic.produce(
                    producer,
                    args.seed,
                    events,
                    start_ns=start_ns,
                    rate_per_s=args.rate,
                    pace=args.rate,
                    instruments=instruments,
                )

        feeding = asyncio.create_task(produce())
        bad = (
            asyncio.create_task(_inject_corpus(settings, names["trades"], args.bad_every_s, stop))
            if args.bad_every_s > 0
            else None
        )
        while not feeding.done():
            samples.append(await _sample(proc, settings, t0))
            s = samples[-1]
            log.info("soak sample", **s.__dict__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(feeding), timeout=args.sample_s)
        produced = await feeding
        stop.set()
        bad_accepted, bad_dead = await bad if bad is not None else (0, Counter[str]())
        loaded = time.monotonic() - t0
        samples.append(await _sample(proc, settings, t0))

        # drain: lag 0 and every accepted tick stored
        expected_ticks = produced + bad_accepted
        stored = 0
        deadline = time.monotonic() + args.drain_timeout_s
        while time.monotonic() < deadline:
            stored = int(await pg.fetchval(f"SELECT count(*) FROM {settings.pg_schema}.ticks"))
            if stored >= expected_ticks and await _lag(settings) == 0:
                break
            await asyncio.sleep(1)
        drained_s = time.monotonic() - t0 - loaded
        distinct = int(
            await pg.fetchval(
                f"SELECT count(DISTINCT (venue, symbol, trade_id, ts)) "
                f"FROM {settings.pg_schema}.ticks"
            )
        )
        end = await end_offsets(settings, list(names.values()))
        dlq = await dead_letter_reasons(settings, start_offsets, end)
        same_worker = worker.running and proc.pid == pid and proc.is_running()
        worker.stop()
    finally:
        worker.kill()
        if not args.keep:
            await cleanup(settings, pg)
        await pg.close()
    validate_expected = {k: n for k, n in bad_dead.items() if k.startswith("validate:")}
    validate_got = {k: n for k, n in dlq.items() if k.startswith("validate:")}
    return {
        "config": {
            "minutes": args.minutes,
            "rate_per_s": args.rate,
            "sample_s": args.sample_s,
            "warmup_s": args.warmup_s,
            "bad_every_s": args.bad_every_s,
            "partitions": args.partitions,
            "cpus": psutil.cpu_count(),
            "load_avg_at_end": list(psutil.getloadavg()),
        },
        "produced_events": produced,
        "loaded_s": round(loaded, 1),
        "drain_s": round(drained_s, 1),
        "summary": summarize(samples, args.warmup_s),
        "reconciled": {
            "ticks_expected": expected_ticks,
            "ticks_stored": stored,
            "ticks_distinct": distinct,
            "dead_letters_by_reason": dict(sorted(dlq.items())),
            "validate_dead_letters_as_expected": validate_got == validate_expected,
            "same_worker_process": same_worker,
            "ok": stored == expected_ticks == distinct
            and validate_got == validate_expected
            and same_worker,
        },
        "samples": [s.__dict__ for s in samples],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="excluded from trends")
    parser.add_argument("--bad-every-s", type=float, default=30.0, help="0: no bad input")
    parser.add_argument("--drain-timeout-s", type=float, default=120.0)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--web-port", type=int, default=0, help="worker's /metrics; 0: a free one")
    parser.add_argument("--keep", action="store_true", help="keep schema/topics/keys")
    parser.add_argument("--log-dir", default=str(REPO / ".dev" / "logs" / "bench"))
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_s <= 0:
        parser.error("--minutes, --rate and --sample-s must be > 0")
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    doc = asyncio.run(soak(args))
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        s = doc["summary"]
        r = s["rss_mib"]
        log.info(
            "soak done",
            rss_start_mib=r["start"],
            rss_end_mib=r["end"],
            rss_max_mib=r["max"],
            growth_pct=r["growth_pct"],
            second_half_growth_pct=r["second_half_growth_pct"],
            slope_mib_per_min=r["slope_mib_per_min"],
            fds=s["fds"],
            connections=s["connections"],
            tasks=s["asyncio_tasks"],
            reconciled=doc["reconciled"],
        )
    return 0 if doc["reconciled"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
