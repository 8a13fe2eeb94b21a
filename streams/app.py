"""The Faust app factory: one place that wires topics, agents, web routes and settings."""

from __future__ import annotations

import tempfile
from pathlib import Path

import faust

from agents import bars, damping, indicators, lag_monitor, sinks, validate
from streams.kafka import commit_watchdog
from streams.kafka.clients import kafka_credentials
from streams.ops import web
from streams.settings import Settings
from streams.topics import make_topics


def new_faust_app(settings: Settings, *, web_enabled: bool = True) -> faust.App:
    """A Faust app tuned for this pipeline (and the benchmark's baseline), with no agents."""
    datadir = Path(tempfile.gettempdir()) / "sepstream-faust" / settings.group_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.group_id,
        broker=settings.broker_urls,
        broker_credentials=kafka_credentials(settings),  # TLS/SASL (docs/OPERATIONS.md)
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        web_enabled=web_enabled,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_linger=settings.producer_linger_ms / 1000,
        producer_max_batch_size=settings.producer_max_batch_bytes,
        consumer_max_fetch_size=settings.consumer_max_fetch_bytes,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        # On shutdown do not wait for unacked events (a sink may be down): they were not
        # committed and are redelivered to whoever owns the partition next.
        stream_wait_empty=False,
        table_standby_replicas=0,
        store="memory://",
        # Faust keeps a little local metadata; never in the working directory.
        datadir=str(datadir),
    )


def create_app(settings: Settings) -> faust.App:

    commit_watchdog.install_strict_consumer(settings.kafka_fetch_max_wait_ms)
    app = new_faust_app(settings)
    topics = make_topics(app, settings)

    validate.register(app, topics, settings)
    bars.register(app, topics, settings)
    sinks.register(app, topics, settings)
    damping.register(app, topics, settings)
    indicators.register(app, topics, settings)
    lag_monitor.register(app, topics, settings)
    web.register(app, settings)
    commit_watchdog.register(app)
    return app
