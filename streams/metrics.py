"""Prometheus metrics of a worker process (served on the worker's web port at /metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

EVENTS_IN: Final = Counter("sepstream_events_in", "Events read, by stage", ["stage"])
EVENTS_OUT: Final = Counter("sepstream_events_out", "Events passed on, by stage", ["stage"])
DEAD_LETTERS: Final = Counter(
    "sepstream_dead_letters", "Events sent to the dead-letter topic", ["stage", "reason"]
)
BATCH_EVENTS: Final = Histogram(
    "sepstream_batch_events",
    "Events per wire record",
    buckets=(1, 2, 8, 32, 128, 512, 2048, 8192),
)
SINK_ROWS: Final = Counter(
    "sepstream_sink_rows", "Rows written, by sink and table", ["sink", "table"]
)
SINK_SECONDS: Final = Histogram(
    "sepstream_sink_write_seconds", "Duration of one committed sink write", ["sink"]
)
SINK_RETRIES: Final = Counter("sepstream_sink_retries", "Failed sink writes retried", ["sink"])
SINK_LATENCY: Final = Histogram(
    "sepstream_end_to_end_seconds",
    "ts_recv of the newest event in a write to the write's commit",
    ["sink"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BARS_CLOSED: Final = Counter("sepstream_bars_closed", "Bars closed, by timeframe", ["timeframe"])
BARS_CORRECTED: Final = Counter("sepstream_bars_corrected", "Bars re-emitted after close")
