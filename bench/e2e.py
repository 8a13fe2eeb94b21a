"""End-to-end benchmark (issue #8): throughput against two per-record baselines, latency at
fixed loads, and memory with many instruments.

    python -m bench.e2e --compare --repeat 3 --json          # flat-out, alternating variants
    python -m bench.e2e --latency --loads 1000,10000,20000,50000 --json
    python -m bench.e2e --rss --instruments 1000 --json

A benchmark, not a test: it needs the dev services (``bash deploy/dev.sh up``). Every run
gets a fresh namespace (topics, PostgreSQL schema, Redis prefix, consumer group), dropped
afterwards.

``--compare`` (sustained throughput, flat out). The synthetic source's trades are produced
first, then the worker starts; the clock runs from its first record to the moment the
input is reconciled (every event accepted or dead-lettered, the group's offsets at the log
end of every topic it consumes, every tick in TimescaleDB): `bench.pipeline`'s method.
Variants, alternated in each round so that their ratios hold on a noisy machine:

* ``sepstream`` — the real worker (validate → bars → indicators → damping → TimescaleDB +
  Redis), tick archive on;
* ``sepstream-noarchive`` — the same with ``SEPSTREAM_ARCHIVE_TICKS=false`` (bars,
  indicators, signals and every Redis sink still on);
* ``quix`` — `bench.quix_pipeline`, the same work as a Quix Streams application;
* ``faust`` — `bench.naive_faust`, the same work as a per-record Faust agent;
* the raw binary-COPY rate of the same trades into a ``ticks`` hypertable
  (`bench.pipeline.ceiling_copy`), once per round.

The simulated market runs at ``--sim-rate`` events/s (default 20), so 300k events span
about 4 simulated hours: every instrument closes enough 1-minute bars for indicators and
damping signals (64-bar windows), which all variants compute and store.

``--latency`` (sepstream only). The worker runs first; the synthetic source then feeds it
live at each fixed rate for ``--duration`` s, every slice re-stamped when it is handed to the
producer (``ts_recv`` = now, ``ts_event`` = now − the simulated venue latency), as a
collector would. Two observers time each event:

* Redis: a separate process polls the latest-trade hashes every ``--redis-poll-ms``; an
  event is visible at the first poll whose ``ts_recv`` for its instrument is ≥ its own;
* TimescaleDB: the harness polls max(trade_id) per instrument (an index lookup) every
  ``--pg-poll-ms``; an event is committed at the first poll that returns its id or a later one.

Poll times are taken when the answer arrives, so figures are upper bounds by up to one
poll interval. CPU and peak RSS of the worker, the services and the harness are sampled
with psutil.

``--rss``: the same live feed over ``--instruments`` instruments, reporting the worker's
peak RSS (latency observed on the first 32 instruments).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import asyncpg
import numpy as np
import numpy.typing as npt
import orjson
import psutil
import redis
import redis.asyncio as aioredis
import structlog

from bench import naive_faust
from bench.pipeline import (
    Observer,
    PerEventProducer,
    Produced,
    Profiler,
    RunResult,
    TimedSink,
    Timeline,
    broker_version,
    ceiling_copy,
    cleanup,
    create_topics,
    fill_result,
    first_record_at,
    machine_info,
    package_versions,
    run_settings,
    source_state,
    summarize,
    watch,
)
from schemas.events import Kind
from streams.kafka.admin import ensure_topics
from streams.kafka.producer import BatchingProducer
from streams.ops.logs import configure_logging
from streams.ops.services import service_versions
from streams.settings import Settings
from streams.sources import synthetic
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess

log = structlog.get_logger("bench.e2e")
REPO: Final = Path(__file__).resolve().parents[1]
SEPSTREAM: Final = "sepstream"
NOARCHIVE: Final = "sepstream-noarchive"
QUIX: Final = "quix"
FAUST: Final = "faust"
VARIANTS: Final = (SEPSTREAM, NOARCHIVE, QUIX, FAUST)
LABELS: Final = {
    SEPSTREAM: "sepstream (micro-batched), tick archive on",
    NOARCHIVE: "sepstream (micro-batched), tick archive off",
    QUIX: "Quix Streams, per record",
    FAUST: "Faust, per record",
}
SERVICE_PORTS: Final = {"kafka": 19092, "postgres": 55432, "redis": 56379}
OBSERVED_MAX: Final = 32  # instruments the latency observers follow


# ---- process accounting --------------------------------------------------------------


@dataclass
class ProcStats:
    """CPU seconds used and peak RSS seen, for one process (and its children)."""

    name: str
    cpu_s: float = 0.0
    cores: float = 0.0  # cpu_s over the sampled interval
    peak_rss_mib: float = 0.0


class ProcSampler:
    """Samples CPU time and RSS of named processes every `period_s` (psutil)."""

    def __init__(self, procs: dict[str, list[psutil.Process]], period_s: float = 0.25) -> None:
        self.procs = procs
        # a process named on its own is not counted again in another's tree (the worker
        # is a child of the harness)
        self.named = {p.pid for roots in procs.values() for p in roots}
        self.period_s = period_s
        self.stats = {name: ProcStats(name) for name in procs}
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self._task: asyncio.Task[None] | None = None

    def _tree(self, roots: list[psutil.Process]) -> list[psutil.Process]:
        out: list[psutil.Process] = []
        for p in roots:
            with contextlib.suppress(psutil.Error):
                out += [p, *(c for c in p.children() if c.pid not in self.named)]
        return out

    def _sample(self) -> dict[str, float]:
        cpu: dict[str, float] = {}
        for name, roots in self.procs.items():
            total, rss = 0.0, 0
            for p in self._tree(roots):
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
                    rss += p.memory_info().rss
            cpu[name] = total
            st = self.stats[name]
            st.peak_rss_mib = max(st.peak_rss_mib, rss / 2**20)
        return cpu

    async def _loop(self) -> None:
        while True:
            cpu = self._sample()
            wall = time.perf_counter() - self._t0
            for name, c in cpu.items():
                st = self.stats[name]
                st.cpu_s = c - self._cpu0.get(name, c)
                st.cores = st.cpu_s / wall if wall > 0 else 0.0
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self._cpu0 = self._sample()
        self._t0 = time.perf_counter()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, dict[str, float]]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {
            n: {"cpu_s": round(s.cpu_s, 2), "cores": round(s.cores, 2),
                "peak_rss_mib": round(s.peak_rss_mib, 1)}
            for n, s in self.stats.items()
        }  # fmt: skip


def service_processes() -> dict[str, list[psutil.Process]]:
    """The dev services' processes, found by their listening ports (best effort)."""
    found: dict[str, list[psutil.Process]] = {}
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return found
    for c in conns:
        if c.status != psutil.CONN_LISTEN or c.pid is None:
            continue
        for name, port in SERVICE_PORTS.items():
            if c.laddr and c.laddr.port == port:
                with contextlib.suppress(psutil.Error):
                    found.setdefault(name, []).append(psutil.Process(c.pid))
    return found


# ---- throughput comparison -----------------------------------------------------------


@dataclass(frozen=True)
class CompareOptions:
    events: int
    seed: int
    sim_rate: float
    poll_s: float
    timeout_s: float
    keep: bool
    log_dir: Path
    py_spy: Path | None


async def produce_input(
    settings: Settings, variant: str, opts: CompareOptions, start_ns: int
) -> Produced:
    """The same synthetic trades: batched records for sepstream, one per record otherwise."""
    if variant in (SEPSTREAM, NOARCHIVE):
        await ensure_topics(settings)
        async with BatchingProducer(settings, hot_topics(settings)["trades"]) as producer:
            timed = TimedSink(producer)
            sent = await synthetic.produce(
                timed, opts.seed, opts.events, start_ns=start_ns, rate_per_s=opts.sim_rate
            )
            await producer.flush()
        records, errors = producer.records_sent, producer.send_errors
    else:
        await create_topics(settings, [settings.topic(t) for t in naive_faust.TOPICS])
        async with PerEventProducer(settings, settings.topic(naive_faust.TRADES)) as per_event:
            timed = TimedSink(per_event)
            sent = await synthetic.produce(
                timed, opts.seed, opts.events, start_ns=start_ns, rate_per_s=opts.sim_rate
            )
        records, errors = per_event.records, per_event.errors
    done = time.perf_counter()
    if errors:
        raise RuntimeError(f"{errors} records not delivered")
    return Produced(sent, records, done - (timed.first or done))


def worker_for(variant: str, settings: Settings, log_path: Path) -> WorkerProcess:
    if variant in (SEPSTREAM, NOARCHIVE):
        return WorkerProcess(settings, log_path)
    if variant == QUIX:
        return WorkerProcess(settings, log_path, module="bench.quix_pipeline")
    return WorkerProcess(
        settings,
        log_path,
        module="bench.naive_faust",
        env={"BENCH_NAIVE_FLUSH_RECORDS": "5000", "BENCH_NAIVE_FLUSH_MS": "100"},
    )


def observer_for(variant: str, settings: Settings) -> Observer:
    if variant in (SEPSTREAM, NOARCHIVE):
        names = hot_topics(settings)
        return Observer(
            settings,
            events_topic=names["events"],
            dlq_topic=names["dlq"],
            dlq_stage="validate",
            watched=[names[t] for t in ("trades", "events", "bars", "indicators", "signals")],
        )
    return Observer(
        settings,
        events_topic=None,
        dlq_topic=settings.topic(naive_faust.DLQ),
        dlq_stage=naive_faust.STAGE,
        watched=[settings.topic(naive_faust.TRADES)],
    )


async def derived_rows(pg: asyncpg.Connection, schema: str) -> dict[str, int]:
    """Rows of every table the run wrote (the check that all variants did the same work)."""
    out = {}
    for table in ("ticks", "bars", "indicators", "signals"):
        if await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{table}"):
            out[table] = int(await pg.fetchval(f"SELECT count(*) FROM {schema}.{table}"))
    return out


async def compare_run(
    variant: str, rnd: int, base: Settings, opts: CompareOptions, start_ns: int
) -> dict[str, Any]:
    ns = f"e2e_{uuid.uuid4().hex[:8]}_{rnd}{VARIANTS.index(variant)}"
    settings = run_settings(base, ns, f"e2e-{variant}")
    if variant == NOARCHIVE:
        settings = settings.replace(archive_ticks=False)
    log_path = opts.log_dir / f"{ns}-{variant}.log"
    pg = await asyncpg.connect(settings.dsn_with_password())
    load = os.getloadavg()[0]
    worker: WorkerProcess | None = None
    try:
        produced = await produce_input(settings, variant, opts, start_ns)
        worker = worker_for(variant, settings, log_path)
        result = _Result(variant=variant, round=rnd, events=produced.events, load=load)
        async with observer_for(variant, settings) as observer:
            launched = time.time()
            worker.start()
            assert worker.proc is not None
            sampler = ProcSampler({"worker": [psutil.Process(worker.proc.pid)]})
            sampler.start()
            name = f"{ns}-{variant}"
            profiler = (
                Profiler(opts.py_spy, worker.proc.pid, name, native=True) if opts.py_spy else None
            )
            try:
                tl = await watch(
                    observer,
                    pg,
                    produced=produced.events,
                    pid=worker.proc.pid,
                    alive=lambda: worker.running,
                    poll_s=opts.poll_s,
                    timeout_s=opts.timeout_s,
                    on_progress=profiler.start if profiler else None,
                    stores_ticks=variant != NOARCHIVE,
                )
            except RuntimeError as exc:
                result.error = f"{exc} (see {log_path})"
                tl = Timeline()
            finally:
                if profiler is not None:
                    result.profile = profiler.stop()
                result.processes = await sampler.stop()
            if tl.first_output_ms is None:  # watch() leaves it unset without a ticks check
                tl.first_output_ms = observer.first_ms
        # the derived tables settle after the input is reconciled (bars on idle, etc.)
        await asyncio.sleep(0 if tl.reconciled_at is None else 1.0)
        first = await first_record_at(settings, "batched" if "sepstream" in variant else "x", tl)
        rr = RunResult(variant, rnd, ns, produced.events, produced.records, 0, 0, 0, False)
        await fill_result(rr, settings=settings, pg=pg, tl=tl, first=first, launched=launched)
        result.events_per_s = rr.events_per_s
        result.seconds = rr.seconds
        result.startup_s = rr.startup_s
        result.tail_s = rr.tail_s
        result.worker_cpu_s = rr.worker_cpu_s
        result.worker_cores = rr.worker_cpu_share
        result.reconciled = rr.reconciled
        result.error = result.error or rr.error
        result.rows = await derived_rows(pg, settings.pg_schema)
        result.redis_keys = rr.redis_keys
        result.records = produced.records
        result.producer_events_per_s = round(produced.events_per_s)
        result.worker_log = str(log_path)
    finally:
        if worker is not None:
            worker.stop()  # after the derived tables settled (above)
        try:
            if not opts.keep:
                await cleanup(settings, pg)
        finally:
            await pg.close()
    log.info("run", **{k: v for k, v in asdict(result).items() if k not in ("processes", "rows")})
    return asdict(result)


@dataclass
class _Result:
    variant: str
    round: int
    events: int
    load: float
    records: int = 0
    reconciled: bool = False
    events_per_s: float | None = None
    seconds: float | None = None
    startup_s: float | None = None
    tail_s: float | None = None
    worker_cpu_s: float | None = None
    worker_cores: float | None = None
    producer_events_per_s: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)
    redis_keys: dict[str, int] = field(default_factory=dict)
    processes: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None
    profile: str | None = None
    worker_log: str = ""


async def compare(args: argparse.Namespace, base: Settings) -> dict[str, Any]:
    opts = CompareOptions(
        events=args.events,
        seed=args.seed,
        sim_rate=args.sim_rate,
        poll_s=args.poll_ms / 1000,
        timeout_s=args.timeout,
        keep=args.keep,
        log_dir=Path(args.log_dir),
        py_spy=Path(args.py_spy) if args.py_spy else None,
    )
    start_ns = synthetic.default_window(args.events, args.sim_rate, time.time_ns())
    runs: list[dict[str, Any]] = []
    copy_rates: list[float] = []
    for rnd in range(1, args.repeat + 1):
        for variant in args.variants:
            runs.append(await compare_run(variant, rnd, base, opts, start_ns))
        if not args.no_copy:
            scratch = run_settings(base, f"e2e_{uuid.uuid4().hex[:8]}_{rnd}c", "e2e-copy")
            copy_rates.append(await ceiling_copy(scratch, args.events, args.seed, start_ns))
            log.info("copy ceiling", round=rnd, rows_per_s=round(copy_rates[-1]))
    variants: dict[str, Any] = {}
    for v in args.variants:
        mine = [r for r in runs if r["variant"] == v]
        variants[v] = {
            "label": LABELS[v],
            "events_per_s": summarize([r["events_per_s"] for r in mine if r["events_per_s"]]),
            "worker_cores": summarize([r["worker_cores"] for r in mine if r["worker_cores"]], 2),
            "worker_cpu_us_per_event": summarize(
                [1e6 * r["worker_cpu_s"] / r["events"] for r in mine if r["worker_cpu_s"]]
            ),
            "worker_peak_rss_mib": summarize(
                [r["processes"]["worker"]["peak_rss_mib"] for r in mine if r["processes"]]
            ),
            "runs_reconciled": sum(1 for r in mine if r["reconciled"]),
        }

    def median(v: str) -> float | None:
        got = variants.get(v, {}).get("events_per_s", {}).get("median")
        return float(got) if got else None

    ratios: dict[str, float | None] = {}
    for fast in (SEPSTREAM, NOARCHIVE):
        for slow in (QUIX, FAUST):
            a, b = median(fast), median(slow)
            ratios[f"{fast}/{slow}"] = round(a / b, 2) if a and b else None
    copy = summarize(copy_rates)
    a = median(SEPSTREAM)
    ratios["sepstream/copy_ceiling"] = (
        round(a / copy["median"], 3) if a and copy["median"] else None
    )
    return {
        "mode": "compare",
        "params": {
            "events": args.events,
            "repeat": args.repeat,
            "seed": args.seed,
            "sim_rate_per_s": args.sim_rate,
            "partitions": base.partitions,
            "batch_max_events": base.batch_max_events,
            "sink_max_records": base.sink_max_records,
            "commit_interval_s": base.commit_interval_s,
        },
        "statistic": "median over rounds; variants alternate within each round",
        "variants": variants,
        "copy_rows_per_s": copy,
        "ratios": ratios,
        "runs": runs,
    }


# ---- live feed, latency ---------------------------------------------------------------


def instruments_for(count: int) -> tuple[synthetic.Instrument, ...]:
    """The default market, or `count` instruments spread over the simulated venues."""
    if count <= len(synthetic.DEFAULT_INSTRUMENTS):
        return synthetic.DEFAULT_INSTRUMENTS[:count]
    venues = ("sim_binance", "sim_coinbase", "sim_kraken")
    return tuple(
        synthetic.Instrument(
            venues[i % 3], f"X{i:04d}-USD", 100.0 + i, 0.8, 2.0, 1.0, latency_ms=3.0
        )
        for i in range(count)
    )


class LiveFeed:
    """Hands the synthetic slices to the producer re-stamped as received now.

    Keeps, per instrument, each event's (ts_recv, trade_id) for the latency join.
    """

    def __init__(self, inner: synthetic.EventSink) -> None:
        self.inner = inner
        self.recv: dict[str, list[npt.NDArray[np.int64]]] = {}
        self.ids: dict[str, list[npt.NDArray[np.int64]]] = {}
        self._last_event: dict[str, int] = {}
        self.first_id: dict[str, int] = {}  # per instrument: its first trade id fed
        self.events = 0

    async def add(
        self,
        kind: Kind,
        venue: str,
        symbol: str,
        columns: dict[str, Any],
        *,
        timeframe: str | None = None,
        reason: str | None = None,
    ) -> None:
        key = f"{venue}:{symbol}"
        now = time.time_ns()
        latency = columns["ts_recv"] - columns["ts_event"]
        # strictly increasing per instrument, so the latest trade is also the last one fed
        step = np.arange(len(latency), dtype=np.int64)
        ts_event = np.maximum(now - latency, self._last_event.get(key, 0) + 1) - step
        ts_event = np.maximum.accumulate(ts_event) + step
        self._last_event[key] = int(ts_event[-1])
        ts_recv = np.full(len(latency), now, dtype=np.int64)
        cols = {**columns, "ts_event": ts_event, "ts_recv": ts_recv}
        self.recv.setdefault(key, []).append(ts_recv)
        ids = np.asarray(columns["trade_id"], dtype=np.int64)
        self.ids.setdefault(key, []).append(ids)
        self.first_id.setdefault(key, int(ids[0]))
        self.events += len(ts_recv)
        await self.inner.add(kind, venue, symbol, cols, timeframe=timeframe, reason=reason)

    def arrays(self, key: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        return np.concatenate(self.recv[key]), np.concatenate(self.ids[key])


def redis_observer(url: str, keys: list[str], poll_s: float, conn: Connection, stop: Any) -> None:
    """Child process: poll the latest-trade hashes; send back every change seen."""
    client = redis.Redis.from_url(url)
    seen: dict[str, int] = {}
    changes: list[tuple[str, int, int]] = []  # (key, seen at ns, ts_recv)
    while not stop.is_set():
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.hget(k, "ts_recv")
        got = pipe.execute()
        at = time.time_ns()
        for k, raw in zip(keys, got, strict=True):
            if raw is None:
                continue
            value = int(raw)
            if value != seen.get(k):
                seen[k] = value
                changes.append((k, at, value))
        time.sleep(poll_s)
    conn.send(changes)
    conn.close()
    client.close()


async def pg_observer(
    pg: asyncpg.Connection,
    schema: str,
    feed: LiveFeed,
    instruments: list[tuple[str, str]],
    *,
    span: int,
    poll_s: float,
    stop: asyncio.Event,
) -> list[tuple[str, int, int]]:
    """Poll max(trade_id) per instrument (an index lookup); every change seen.

    Only ids of the timed feed count (from its first id per instrument on): the warm-up's
    ids come from another random base (ids of one feed are contiguous per instrument, and
    two random bases fall within `span` of each other with negligible probability).
    """
    sql = (
        f"SELECT i.venue, i.symbol, (SELECT max(trade_id) FROM {schema}.ticks t "
        f"WHERE t.venue = i.venue AND t.symbol = i.symbol "
        f"AND t.trade_id BETWEEN i.lo AND i.lo + $4::int8) "
        f"FROM unnest($1::text[], $2::text[], $3::int8[]) AS i(venue, symbol, lo)"
    )
    seen: dict[str, int] = {}
    changes: list[tuple[str, int, int]] = []
    while not stop.is_set():
        if await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.ticks"):
            break
        await asyncio.sleep(poll_s)
    while not stop.is_set():
        fed = [(v, sym, feed.first_id[f"{v}:{sym}"]) for v, sym in instruments
               if f"{v}:{sym}" in feed.first_id]  # fmt: skip
        if not fed:
            await asyncio.sleep(poll_s)
            continue
        rows = await pg.fetch(sql, *(list(col) for col in zip(*fed, strict=True)), span)
        at = time.time_ns()
        for venue, symbol, top in rows:
            key = f"{venue}:{symbol}"
            if top is not None and top != seen.get(key):
                seen[key] = int(top)
                changes.append((key, at, int(top)))
        await asyncio.sleep(poll_s)
    return changes


def latencies(
    feed: LiveFeed,
    changes: list[tuple[str, int, int]],
    *,
    by_id: bool,
    since_ns: int,
) -> npt.NDArray[np.float64]:
    """Per event fed after `since_ns`: first observation covering it − its ts_recv (ms).

    Events never observed are left out; `unseen` in the caller counts them.
    """
    out: list[npt.NDArray[np.float64]] = []
    per_key: dict[str, list[tuple[int, int]]] = {}
    for key, at, value in changes:
        per_key.setdefault(key, []).append((at, value))
    for key, seen in per_key.items():
        if key not in feed.recv:
            continue
        recv, ids = feed.arrays(key)
        obs_at = np.array([a for a, _ in seen], dtype=np.int64)
        obs_val = np.maximum.accumulate(np.array([v for _, v in seen], dtype=np.int64))
        probe = ids if by_id else recv
        j = np.searchsorted(obs_val, probe, side="left")
        ok = (j < len(obs_val)) & (recv >= since_ns)
        out.append((obs_at[j[ok]] - recv[ok]) / 1e6)
    return np.concatenate(out) if out else np.empty(0)


def pct(values: npt.NDArray[np.float64]) -> dict[str, float | None]:
    if len(values) == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    q = np.percentile(values, [50, 90, 99])
    return {
        "p50": round(float(q[0]), 2),
        "p90": round(float(q[1]), 2),
        "p99": round(float(q[2]), 2),
        "max": round(float(values.max()), 2),
    }


@dataclass(frozen=True)
class LiveOptions:
    duration_s: float
    settle_s: float
    seed: int
    redis_poll_s: float
    pg_poll_s: float
    drain_s: float
    keep: bool
    log_dir: Path
    py_spy: Path | None


async def wait_visible(settings: Settings, keys: Sequence[str], timeout_s: float) -> bool:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await client.exists(*keys) == len(keys):
                return True
            await asyncio.sleep(0.1)
        return False
    finally:
        await client.aclose()


async def live_run(
    base: Settings, rate: float, opts: LiveOptions, *, instruments: int, label: str
) -> dict[str, Any]:
    """One live run of the real worker at `rate` events/s over `instruments` instruments."""
    ns = f"e2e_{uuid.uuid4().hex[:8]}_{label}"
    settings = run_settings(base, ns, "e2e-live")
    market = instruments_for(instruments)
    keys = [f"{i.venue}:{i.symbol}" for i in market]
    observed = keys[:OBSERVED_MAX]
    hashes = [f"{settings.redis_prefix}trade:{k}" for k in observed]
    log_path = opts.log_dir / f"{ns}.log"
    pg = await asyncpg.connect(settings.dsn_with_password())
    observer_pg = await asyncpg.connect(settings.dsn_with_password())
    out: dict[str, Any] = {"rate": rate, "instruments": instruments, "namespace": ns}
    worker = WorkerProcess(settings, log_path)
    ctx = mp.get_context("spawn")
    stop_redis = ctx.Event()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=redis_observer,
        args=(settings.redis_url, hashes, opts.redis_poll_s, child, stop_redis),
        daemon=True,
    )
    try:
        await ensure_topics(settings)
        worker.start()
        assert worker.proc is not None
        async with BatchingProducer(settings, hot_topics(settings)["trades"]) as producer:
            # warm-up: a trickle until every instrument is in Redis (group joined, DDL done)
            warm = LiveFeed(producer)
            warm_task = asyncio.create_task(
                _feed(warm, opts.seed + 1, 500 + 2 * len(market), 100.0 * len(market), market)
            )
            visible = await wait_visible(settings, [f"{settings.redis_prefix}trade:{k}"
                                                    for k in observed], 60.0)  # fmt: skip
            await warm_task
            if not visible:
                raise RuntimeError(f"warm-up never reached Redis (see {log_path})")
            proc.start()
            feed = LiveFeed(producer)
            stop_pg = asyncio.Event()
            pg_task = asyncio.create_task(
                pg_observer(
                    observer_pg,
                    settings.pg_schema,
                    feed,
                    [tuple(k.split(":", 1)) for k in observed],  # type: ignore[misc]
                    span=int(rate * (opts.duration_s + opts.settle_s)),
                    poll_s=opts.pg_poll_s,
                    stop=stop_pg,
                )
            )
            procs = {"worker": [psutil.Process(worker.proc.pid)], "harness": [psutil.Process()]}
            procs |= service_processes()
            sampler = ProcSampler(procs)
            sampler.start()
            profiler = (
                Profiler(opts.py_spy, worker.proc.pid, ns, native=True) if opts.py_spy else None
            )
            if profiler is not None:
                profiler.start()
            events = int(rate * (opts.duration_s + opts.settle_s))
            began = time.time_ns()
            await _feed(feed, opts.seed, events, rate, market)
            await producer.flush()
            fed_s = (time.time_ns() - began) / 1e9
        # drain: wait until the last event fed is in Redis and committed in TimescaleDB
        last = {k: feed.arrays(k) for k in observed if k in feed.recv}
        drained_at = await _drain(settings, pg, last, opts.drain_s)
        if profiler is not None:
            out["profile"] = profiler.stop()
        out["processes"] = await sampler.stop()
        stop_pg.set()
        pg_changes = await pg_task
        stop_redis.set()
        cut = len(f"{settings.redis_prefix}trade:")
        redis_changes = [
            (k[cut:], at, v) for k, at, v in (parent.recv() if parent.poll(30) else [])
        ]
        proc.join(10)
        since = began + int(opts.settle_s * 1e9)
        lat_redis = latencies(feed, redis_changes, by_id=False, since_ns=since)
        lat_pg = latencies(feed, pg_changes, by_id=True, since_ns=since)
        timed = sum(int((feed.arrays(k)[0] >= since).sum()) for k in observed if k in feed.recv)
        out |= {
            "events_fed": feed.events,
            "fed_s": round(fed_s, 2),
            "fed_per_s": round(feed.events / fed_s) if fed_s else None,
            "drain_s": None if drained_at is None else round(drained_at - began / 1e9 - fed_s, 2),
            "events_timed": timed,
            "redis_ms": pct(lat_redis),
            "redis_unseen": timed - len(lat_redis),
            "timescale_ms": pct(lat_pg),
            "timescale_unseen": timed - len(lat_pg),
            "redis_polls_changed": len(redis_changes),
            "loadavg": round(os.getloadavg()[0], 2),
        }
    finally:
        stop_redis.set()
        if proc.is_alive():
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        worker.stop()
        await observer_pg.close()
        try:
            if not opts.keep:
                await cleanup(settings, pg)
        finally:
            await pg.close()
    log.info("live run", **{k: v for k, v in out.items() if k != "processes"})
    return out


async def _feed(
    sink: LiveFeed, seed: int, events: int, rate: float, market: Sequence[synthetic.Instrument]
) -> None:
    start_ns = time.time_ns() - synthetic.window_ns(events, rate)
    await synthetic.produce(
        sink, seed, events, start_ns=start_ns, rate_per_s=rate, pace=rate, instruments=market
    )


async def _drain(
    settings: Settings,
    pg: asyncpg.Connection,
    last: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]],
    timeout_s: float,
) -> float | None:
    """Wall time (s) when every observed instrument's last event is in Redis and PG."""
    client = aioredis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            done = True
            for key, (recv, ids) in last.items():
                raw = await client.hget(f"{settings.redis_prefix}trade:{key}", "ts_recv")
                venue, symbol = key.split(":", 1)
                top = await pg.fetchval(
                    f"SELECT max(trade_id) FROM {settings.pg_schema}.ticks "
                    f"WHERE venue = $1 AND symbol = $2",
                    venue,
                    symbol,
                )
                if raw is None or int(raw) < recv[-1] or top is None or top < ids.max():
                    done = False
                    break
            if done:
                return time.time()
            await asyncio.sleep(0.05)
        return None
    finally:
        await client.aclose()


async def latency(args: argparse.Namespace, base: Settings) -> dict[str, Any]:
    opts = _live_options(args)
    runs = []
    for rnd in range(1, args.repeat + 1):
        for rate in args.loads:
            runs.append(
                await live_run(
                    base, rate, opts, instruments=args.instruments, label=f"{rnd}l{int(rate)}"
                )
            )
    by_rate: dict[str, Any] = {}
    for rate in args.loads:
        mine = [r for r in runs if r["rate"] == rate]

        def med(path: tuple[str, ...], rs: list[dict[str, Any]] = mine) -> float | None:
            vals = []
            for r in rs:
                v: Any = r
                for p in path:
                    v = v.get(p) if isinstance(v, dict) else None
                if v is not None:
                    vals.append(float(v))
            return round(statistics.median(vals), 2) if vals else None

        by_rate[str(int(rate))] = {
            "fed_per_s": med(("fed_per_s",)),
            "redis_p50_ms": med(("redis_ms", "p50")),
            "redis_p99_ms": med(("redis_ms", "p99")),
            "timescale_p50_ms": med(("timescale_ms", "p50")),
            "timescale_p99_ms": med(("timescale_ms", "p99")),
            "worker_cores": med(("processes", "worker", "cores")),
            "worker_peak_rss_mib": med(("processes", "worker", "peak_rss_mib")),
            "drain_s": med(("drain_s",)),
        }
    return {"mode": "latency", "instruments": args.instruments, "by_rate": by_rate, "runs": runs}


def _live_options(args: argparse.Namespace) -> LiveOptions:
    return LiveOptions(
        duration_s=args.duration,
        settle_s=args.settle,
        seed=args.seed,
        redis_poll_s=args.redis_poll_ms / 1000,
        pg_poll_s=args.pg_poll_ms / 1000,
        drain_s=args.drain,
        keep=args.keep,
        log_dir=Path(args.log_dir),
        py_spy=Path(args.py_spy) if args.py_spy else None,
    )


# ---- entry point ----------------------------------------------------------------------


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    base = Settings.from_env(
        session_timeout_s=args.session_timeout,
        rebalance_timeout_s=args.rebalance_timeout,
        partitions=args.partitions,
    )
    services = await service_versions(base)
    down = [name for name, s in services.items() if not s.get("ok")]
    if down:
        raise SystemExit(f"services not reachable: {down} (bash deploy/dev.sh up)")
    doc: dict[str, Any] = {
        "benchmark": "e2e",
        "command": "python -m bench.e2e " + " ".join(sys.argv[1:]),
        "started_at": started,
        "source": source_state(),
        "machine": machine_info(),
        "versions": {
            "packages": package_versions() | _more_versions(),
            "broker": broker_version(),
            "services": services,
        },
    }
    if args.compare:
        doc["compare"] = await compare(args, base)
    if args.latency:
        doc["latency"] = await latency(args, base)
    if args.rss:
        opts = _live_options(args)
        doc["rss"] = await live_run(
            base, args.rss_rate, opts, instruments=args.rss_instruments, label="rss"
        )
    doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return doc


def _more_versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for name in ("quixstreams", "confluent-kafka", "psutil"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--compare", action="store_true", help="flat-out throughput, 4 variants")
    parser.add_argument("--latency", action="store_true", help="latency at fixed loads")
    parser.add_argument("--rss", action="store_true", help="worker RSS with many instruments")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--events", type=int, default=300_000, help="--compare: per run")
    parser.add_argument("--sim-rate", type=float, default=20.0, help="--compare: market ev/s")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="--compare: comma list")
    parser.add_argument("--no-copy", action="store_true", help="--compare: skip the COPY rate")
    parser.add_argument("--loads", default="1000,10000,20000,50000", help="--latency: ev/s")
    parser.add_argument("--instruments", type=int, default=7, help="--latency: instruments")
    parser.add_argument("--duration", type=float, default=20.0, help="live: timed seconds")
    parser.add_argument("--settle", type=float, default=3.0, help="live: untimed first s")
    parser.add_argument("--drain", type=float, default=60.0, help="live: max wait after feed")
    parser.add_argument("--redis-poll-ms", type=float, default=1.0)
    parser.add_argument("--pg-poll-ms", type=float, default=10.0)
    parser.add_argument("--rss-instruments", type=int, default=1000)
    parser.add_argument("--rss-rate", type=float, default=20_000.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--poll-ms", type=float, default=200.0, help="--compare: reconcile poll")
    parser.add_argument("--timeout", type=float, default=600.0, help="--compare: s per run")
    parser.add_argument("--session-timeout", type=float, default=6.0)
    parser.add_argument("--rebalance-timeout", type=float, default=4.0)
    parser.add_argument("--keep", action="store_true", help="keep schemas/topics/keys")
    parser.add_argument("--log-dir", default=str(REPO / ".dev" / "logs" / "bench"))
    parser.add_argument("--py-spy", metavar="DIR", help="profile workers with py-spy into DIR")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.loads = [float(x) for x in args.loads.split(",") if x.strip()]
    if not (args.compare or args.latency or args.rss):
        parser.error("choose at least one of --compare, --latency, --rss")
    if not set(args.variants) <= set(VARIANTS) or args.repeat < 1:
        parser.error(f"--variants from {','.join(VARIANTS)}; --repeat >= 1")
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    doc = asyncio.run(benchmark(args))
    out = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
    if args.json:
        sys.stdout.write(out + "\n")
    else:
        for line in _summary(doc):
            log.info("summary", line=line)
    return 0


def _summary(doc: dict[str, Any]) -> list[str]:
    lines = []
    if "compare" in doc:
        c = doc["compare"]
        for v, s in c["variants"].items():
            lines.append(f"{v}: {s['events_per_s']['median']} ev/s median")
        lines.append(f"ratios {c['ratios']}; COPY {c['copy_rows_per_s']}")
    if "latency" in doc:
        for rate, s in doc["latency"]["by_rate"].items():
            lines.append(f"{rate}/s: {s}")
    if "rss" in doc:
        lines.append(f"rss: {doc['rss'].get('processes', {}).get('worker')}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
