"""damping: md.bars.v1 → md.signals.v1 (DESIGN §5), and the signal sinks → TimescaleDB, Redis.

Per instrument and timeframe the agent keeps the last closed bars (up to 2W−1, W =
`damping_window`) in a changelog-backed Faust table, so a restarted worker resumes without
re-reading history. Each bar record updates that state; every window of W closes that the
update completes or changes becomes one pending window. Pending windows of all instruments
are damped together, one `damp()` call on an (N, W) array per micro-batch (up to
`damping_max_batch` records or `damping_max_wait_ms`), and each becomes one `Signal`.

Order per micro-batch (the shared runner, agents.stage): damp → publish the signals and wait
for the broker → save the state → ack the records. A crash before the state is saved
re-applies the redelivered records and recomputes the same signals (the sinks upsert); a crash
after it skips them (the state remembers the last md.bars.v1 offset applied per instrument).

Bars: a bar for a new minute appends; a bar for a minute already held (a correction, flag
CORRECTED, or a re-emission) replaces that minute's close, and every held window that
contains it is recomputed and re-emitted; an identical close changes nothing; a bar older
than the held history is ignored (no window this agent can still emit contains it).

Library: every worker follows md.model.paths (`streams.model.library.follow`); a new library is
used from the next micro-batch on, logged with its version. Until the first catch-up of
the topic ends (at most `library_wait_s`), damping waits, so a restarted worker does not
emit a batch with the built-in library when a trained one is published.

The sinks read md.signals.v1 like agents/sinks.py reads the hot topics: up to
`sink_max_records` records or `sink_linger_ms`, one committed write, then ack.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import faust
import numpy as np
import orjson
import structlog
from prometheus_client import Counter, Histogram

from agents.sinks import register_sinks
from agents.stage import Output, Stage
from kernels.damping import DampingResult, damp, resolve_backend
from schemas.batch import CodecError, decode_batch
from schemas.events import Kind
from schemas.signal import Signal, decode_signal
from streams.model.library import Library, follow
from streams.ops.metrics import KERNEL_SECONDS
from streams.settings import Settings
from streams.sinks.signals import SignalRedisWriter, SignalTimescaleWriter
from streams.topics import Topics

log = structlog.get_logger(__name__)
STAGE: Final = "damping"

SIGNALS: Final = Counter("sepstream_signals", "Signals emitted, by library version", ["library"])
DAMP_ROWS: Final = Histogram(
    "sepstream_damp_rows",
    "Windows per damp() call",
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384),
)


# --------------------------------------------------------------------------- state


@dataclass
class Series:
    """The held bars of one instrument and timeframe, oldest first (open time ns, close)."""

    ts: list[int] = field(default_factory=list)
    close: list[float] = field(default_factory=list)

    def apply(self, ts: int, close: float, window: int) -> list[int]:
        """Add or replace one closed bar; returns the indices of the windows' last bars that
        this changed (each a window of `window` closes ending there)."""
        keep = 2 * window - 1
        i = bisect.bisect_left(self.ts, ts)
        if i < len(self.ts) and self.ts[i] == ts:
            if self.close[i] == close:
                return []  # the same bar again (a re-emission): nothing changed
            self.close[i] = close
        elif i == 0 and len(self.ts) >= keep:
            return []  # older than the held history
        else:
            self.ts.insert(i, ts)
            self.close.insert(i, close)
            drop = len(self.ts) - keep
            if drop > 0:
                del self.ts[:drop], self.close[:drop]
                i -= drop
        last = len(self.ts) - 1
        return list(range(max(i, window - 1), min(i + window - 1, last) + 1))

    def window_at(self, end: int, window: int) -> list[float]:
        return self.close[end - window + 1 : end + 1]


@dataclass
class InstrumentState:
    """Table value per instrument key: its series per timeframe and the last record applied."""

    series: dict[str, Series] = field(default_factory=dict)
    src: tuple[int, int] | None = None  # (partition, offset) in md.bars.v1

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "src": self.src,
                "series": {tf: {"ts": s.ts, "close": s.close} for tf, s in self.series.items()},
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> InstrumentState:
        doc = orjson.loads(data)
        series = {
            tf: Series([int(t) for t in s["ts"]], [float(c) for c in s["close"]])
            for tf, s in doc.get("series", {}).items()
        }
        src = doc.get("src")
        return cls(series, (int(src[0]), int(src[1])) if src else None)


@dataclass(frozen=True)
class Window:
    venue: str
    symbol: str
    timeframe: str
    ts: int  # open time of the last bar
    closes: list[float]


def to_signals(windows: Sequence[Window], result: DampingResult, window: int) -> list[Signal]:
    """Row i of `result` is `windows[i]`: one Signal each."""
    now = time.time_ns()
    version = result.library_version or "default"
    return [
        Signal(
            venue=w.venue,
            symbol=w.symbol,
            timeframe=w.timeframe,
            ts=w.ts,
            window=window,
            entropy=float(result.entropy[i]),
            coherence=float(result.coherence[i]),
            stability=float(result.stability[i]),
            lam=float(result.lam[i]),
            value=float(result.value[i]),
            confidence=float(result.confidence[i]),
            iterations=int(result.iterations[i]),
            converged=bool(result.converged[i]),
            collapse=bool(result.collapse[i]),
            library_version=version,
            backend=result.backend,
            ts_emit=now,
        )
        for i, w in enumerate(windows)
    ]


class LibraryHolder:
    """The library the next micro-batch uses; swapped by the model-topic follower."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.current = Library.default(window)
        self.ready = asyncio.Event()

    def swap(self, library: Library) -> None:
        if library.window != self.window:
            log.warning(
                "path library ignored: built for another window",
                version=library.version,
                library_window=library.window,
                window=self.window,
            )
            return
        if library.version == self.current.version:
            return
        previous, self.current = self.current.version, library
        log.info("path library swapped", version=library.version, previous=previous, k=library.k)

    async def wait_ready(self, timeout_s: float) -> None:
        if self.ready.is_set():
            return
        try:
            await asyncio.wait_for(self.ready.wait(), timeout_s)
        except TimeoutError:
            log.warning("model topic not read in time; damping with the current library",
                        version=self.current.version, waited_s=timeout_s)  # fmt: skip
            self.ready.set()


class Damping:
    """The stage's logic on the shared runner (agents.stage): per instrument its held
    series, loaded from the table (or this take's staged state) when first needed."""

    def __init__(
        self,
        stage: Stage,
        topics: Topics,
        settings: Settings,
        library: LibraryHolder,
        backend: str,
    ) -> None:
        self.stage = stage
        self.topics = topics
        self.settings = settings
        self.library = library
        self.backend = backend
        self.window = settings.damping_window
        self.states: dict[bytes, InstrumentState] = {}

    def reset(self) -> None:
        self.states.clear()

    def state_for(self, key: bytes) -> InstrumentState:
        state = self.states.get(key)
        if state is None:
            stored = self.stage.stored(key)
            state = InstrumentState() if stored is None else InstrumentState.decode(stored)
            self.states[key] = state
        return state

    def apply(
        self, ev: Any, pending: dict[tuple[bytes, str, int], Window]
    ) -> tuple[bytes, InstrumentState] | None:
        """Fold one bar record into its instrument's state; returns it if it changed."""
        try:
            batch = decode_batch(ev.value)
        except CodecError:
            return None  # the timescale sink dead-letters undecodable md.bars.v1 records
        if batch.kind is not Kind.BAR or not batch.timeframe:
            return None
        key = batch.key.encode()
        state = self.state_for(key)
        msg = ev.message
        if state.src is not None and state.src[0] == msg.partition and msg.offset <= state.src[1]:
            return None  # applied before this worker restarted (redelivery)
        state.src = (msg.partition, msg.offset)
        tf = batch.timeframe
        series = state.series.setdefault(tf, Series())
        order = np.argsort(batch.cols["ts_event"], kind="stable")
        for ts, close in zip(
            batch.cols["ts_event"][order].tolist(), batch.cols["close"][order].tolist(), strict=True
        ):
            for end in series.apply(int(ts), float(close), self.window):
                at = series.ts[end]
                pending[(key, tf, at)] = Window(
                    batch.venue, batch.symbol, tf, at, series.window_at(end, self.window)
                )
        return key, state

    def compute(self, events: Sequence[Any], out: Output) -> None:
        """Fold the take's bars in, damp every window they complete in one call."""
        pending: dict[tuple[bytes, str, int], Window] = {}
        changed = dict(c for ev in events if (c := self.apply(ev, pending)) is not None)
        if pending:
            lib = self.library.current  # one library per micro-batch
            windows = [pending[k] for k in sorted(pending)]
            closes = np.array([w.closes for w in windows], dtype=np.float64)
            started = time.perf_counter()
            result = damp(
                closes,
                lib.paths,
                backend=self.backend,
                dtype=self.settings.damping_dtype,
                library_version=lib.version,
            )
            KERNEL_SECONDS.labels("damping", result.backend).observe(time.perf_counter() - started)
            DAMP_ROWS.observe(len(windows))
            signals = to_signals(windows, result, self.window)
            for signal in signals:
                out.send(self.topics.signals, signal.key.encode(), signal.encode())
            out.after.append(lambda: SIGNALS.labels(lib.version).inc(len(signals)))
        for key, state in changed.items():
            out.states[key] = state.encode()


# --------------------------------------------------------------------------- the agents


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    window = settings.damping_window
    if window < 3:
        raise ValueError(f"damping_window must be >= 3, got {window}")
    if settings.damping_dtype not in ("float64", "float32"):
        raise ValueError(
            f"damping_dtype must be float64 or float32, got {settings.damping_dtype!r}"
        )
    backend = resolve_backend(settings.damping_backend)  # a forced, unusable cupy fails here
    log.info("damping backend chosen", backend=backend, requested=settings.damping_backend,
             dtype=settings.damping_dtype, window=window)  # fmt: skip
    library = LibraryHolder(window)
    table = app.Table(
        "damping-state",
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        use_partitioner=True,  # keyed like md.bars.v1 (venue:symbol): same partitions
    )
    stage = Stage(
        app,
        settings,
        name=STAGE,
        channel=topics.bars,
        dlq=topics.dlq,
        max_records=settings.damping_max_batch,
        linger_s=settings.damping_max_wait_ms / 1000,
        table=table,
    )
    logic = Damping(stage, topics, settings, library, backend)
    stage.run(logic, ready=lambda: library.wait_ready(settings.library_wait_s))

    @app.task
    async def follow_model() -> None:
        await follow(settings, library.swap, library.ready)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def forget(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Another worker may own these instruments now; reload from the table when needed."""
        logic.reset()

    register_sinks(
        app,
        topics,
        settings,
        prefix="signals-",
        inputs=(topics.signals,),
        decode=decode_signal,
        writers={
            "timescale": SignalTimescaleWriter(settings),
            "redis": SignalRedisWriter(settings),
        },
        newest_ns=lambda s: s.ts_emit,
    )
