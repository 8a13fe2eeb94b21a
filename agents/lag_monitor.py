"""lag monitor: every `lag_interval_s`, sample consumer lag and data freshness, judge each
partition (kernels.lag_status), export the gauges and keep the snapshot for `/lag`.

Runs on every worker (not only the leader): each serves its own `/lag` and `/dashboard`,
and Prometheus alert rules aggregate with `max by (group)`. Nothing here may stop the
worker: a broker or Redis that cannot be reached costs one sample, logged.
"""

from __future__ import annotations

from typing import Any

import faust
import structlog

from streams.ops import health
from streams.ops.consumer_lag import LagCollector, LagMonitor, attach, export_metrics
from streams.ops.metrics import DATA_FRESHNESS
from streams.settings import Settings
from streams.topics import Topics

log = structlog.get_logger(__name__)


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    monitor = attach(
        app, LagMonitor(LagCollector(settings), settings.lag_window, settings.lag_history)
    )
    started = False
    symbols: set[tuple[str, str]] = set()

    @app.timer(settings.lag_interval_s, name="lag-monitor")
    async def sample() -> None:
        nonlocal started, symbols
        try:
            if not started:
                await monitor.collector.start()
                started = True
            export_metrics(await monitor.poll())
        except Exception as exc:
            log.warning("lag sample failed", error=repr(exc))
            await monitor.collector.stop()  # reconnect on the next tick
            started = False
        try:
            fresh = await health.freshness(settings)
        except Exception as exc:
            log.warning("freshness sample failed", error=repr(exc))
            return
        now = {(f.venue, f.symbol) for f in fresh if f.age_s is not None}
        for f in fresh:
            if f.age_s is not None:
                DATA_FRESHNESS.labels(f.venue, f.symbol).set(f.age_s)
        for gone in symbols - now:
            DATA_FRESHNESS.remove(*gone)
        symbols = now

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def close(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await monitor.collector.stop()
