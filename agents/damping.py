"""damping: md.bars.v1 → md.signals.v1 (docs/ARCHITECTURE.md#bitspace-damping), and the
signal sinks → TimescaleDB, Redis.

Per instrument and timeframe the stage keeps the last closed bars (up to 2W−1, W =
`damping_window`) in the `damping-state` table (`kernels.damping_state.InstrumentState`).
Each bar record updates that state; every window of W closes that the update completes or
changes becomes one pending window. The pending windows of all instruments in a take (up to
`damping_max_batch` records or `damping_max_wait_ms`) are damped together, one `damp()` call
on an (N, W) array, and each becomes one `Signal`. The shared runner (agents.stage) then
publishes the signals, saves the state and acks; a record at or before the last md.bars.v1
position applied to its instrument is a redelivery and is skipped.

Library: every worker follows md.model.paths (`streams.model.library.follow`); a new library is
used from the next take on, logged with its version. Until the first catch-up of the topic
ends (at most `library_wait_s`), damping waits, so a restarted worker does not emit a batch
with the built-in library when a trained one is published.

The signal sinks read md.signals.v1 on the shared sink loop (agents.sinks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final

import faust
import numpy as np
import structlog
from prometheus_client import Counter, Histogram

from agents.sinks import register_sinks
from agents.stage import Output, Stage, bar_records, redelivered, state_table
from kernels.damping import damp, resolve_backend
from kernels.damping_state import InstrumentState, Window, to_signals
from schemas.signal import decode_signal
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

    def compute(self, events: Sequence[Any], out: Output) -> None:
        """Fold the take's bars in, damp every window they complete in one call."""
        pending: dict[tuple[bytes, str, int], Window] = {}
        changed: dict[bytes, InstrumentState] = {}
        for key, batch, position in bar_records(events):
            state = self.state_for(key)
            if redelivered(state.src, position):
                continue  # applied before this worker restarted
            state.src = position
            for w in state.fold(batch, self.window):
                pending[(key, w.timeframe, w.ts)] = w
            changed[key] = state
        if pending:
            self.damp([pending[k] for k in sorted(pending)], out)
        for key, state in changed.items():
            out.states[key] = state.encode()

    def damp(self, windows: list[Window], out: Output) -> None:
        """One damp() call over every pending window, with one library; a signal each."""
        lib = self.library.current
        closes = np.array([w.closes for w in windows], dtype=np.float64)
        started = time.perf_counter()
        result = damp(
            closes,
            lib.paths,
            backend=self.backend,
            dtype=self.settings.damping_dtype,
            library_version=lib.version,
        )
        KERNEL_SECONDS.labels(STAGE, result.backend).observe(time.perf_counter() - started)
        DAMP_ROWS.observe(len(windows))
        signals = to_signals(windows, result, self.window, time.time_ns())
        for signal in signals:
            out.send(self.topics.signals, signal.key.encode(), signal.encode())
        out.after.append(lambda: SIGNALS.labels(lib.version).inc(len(signals)))


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    """The damping stage, its model-topic follower, and the signal sinks."""
    window = settings.damping_window
    backend = resolve_backend(settings.damping_backend)  # a forced, unusable cupy fails here
    log.info("damping backend chosen", backend=backend, requested=settings.damping_backend,
             dtype=settings.damping_dtype, window=window)  # fmt: skip
    library = LibraryHolder(window)
    stage = Stage(
        app,
        settings,
        name=STAGE,
        channel=topics.bars,
        dlq=topics.dlq,
        max_records=settings.damping_max_batch,
        linger_s=settings.damping_max_wait_ms / 1000,
        table=state_table(app, settings, "damping-state"),
    )
    stage.run(
        Damping(stage, topics, settings, library, backend),
        ready=lambda: library.wait_ready(settings.library_wait_s),
    )

    @app.task
    async def follow_model() -> None:
        await follow(settings, library.swap, library.ready)

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
