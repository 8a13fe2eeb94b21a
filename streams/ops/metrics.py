"""Prometheus metrics of a worker process (served on the worker's web port at /metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

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
# Runtime health (fault tests and bench/soak.py watch these for leaks and back-pressure)
SINK_BUFFERED: Final = Gauge(
    "sepstream_sink_buffered_records",
    "Records fetched for a sink and waiting in its bounded input queue",
    ["sink"],
)
PAUSED_PARTITIONS: Final = Gauge(
    "sepstream_paused_partitions", "Partitions not fetched because a stream buffer is full"
)
ASYNCIO_TASKS: Final = Gauge("sepstream_asyncio_tasks", "Live asyncio tasks in the worker")
FETCH_WAIT_MS: Final = Gauge(
    "sepstream_kafka_fetch_wait_ms",
    "Current fetch_max_wait_ms of a consumer (grows while the broker is slow to return a "
    "backlog, see streams/kafka/fetchwait.py)",
    ["consumer"],
)
# Read path (streams/query/bars.py): one hit or miss per tier consulted, per request
READ_REQUESTS: Final = Counter(
    "sepstream_read_requests",
    "Bar reads per tier consulted: hit = the tier alone had the request's `limit` bars",
    ["tier", "result"],
)
READ_SECONDS: Final = Histogram(
    "sepstream_read_seconds",
    "Duration of one bar read, by the tier that served it",
    ["source"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FORMING_WRITE_ERRORS: Final = Counter(
    "sepstream_forming_bar_write_errors", "Failed writes of forming bars to Redis (retried)"
)

# ---- operators' view (agents/lag_monitor.py, kernels): lag, freshness, kernel time
LAG_MESSAGES: Final = Gauge(
    "sepstream_consumer_lag_messages",
    "Records behind the log end, per group and partition",
    ["group", "topic", "partition"],
)
LAG_SECONDS: Final = Gauge(
    "sepstream_consumer_lag_seconds",
    "Age of the record at the committed offset (0 when caught up)",
    ["group", "topic", "partition"],
)
LAG_STATUS: Final = Gauge(
    "sepstream_consumer_lag_status",
    "Burrow-style status: 0 OK, 1 WARNING, 2 ERROR (stalled), 3 STOPPED",
    ["group", "topic", "partition"],
)
GROUP_LAG_STATUS: Final = Gauge(
    "sepstream_consumer_group_status", "Worst partition status of a consumer group", ["group"]
)
DATA_FRESHNESS: Final = Gauge(
    "sepstream_data_freshness_seconds",
    "Seconds since the newest trade or quote of an instrument was received",
    ["venue", "symbol"],
)
KERNEL_SECONDS: Final = Histogram(
    "sepstream_kernel_seconds",
    "Duration of one vectorised kernel call (damping, indicators), by kernel and backend",
    ["kernel", "backend"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
