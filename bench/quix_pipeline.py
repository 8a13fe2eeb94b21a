"""A baseline for `bench.e2e`: the pipeline's work written as a Quix Streams application.

Quix Streams processes one record at a time through a `StreamingDataFrame`, so the input
is the per-record one of `bench.naive_faust` (one flat JSON event per record, key
``venue:symbol``). Every record goes through `bench.per_record.PerRecordCore` (validate,
bars and roll-ups, indicators and damping of each closed bar); dead letters and closed bars
are produced to their topics by dataframe branches, and accepted events and derived records
go to a Quix sink that writes them with the pipeline's own writers
(`bench.per_record.SinkBuffer`) when Quix checkpoints, before it commits the offsets,
which is Quix's at-least-once contract and the pipeline's.

Only the framework differs from the Faust baseline. Quix is synchronous (confluent-kafka,
librdkafka), so the asyncio sink writers run on a private event loop inside `flush()`.

Run as its own process by the harness: ``python -m bench.quix_pipeline`` with the
``SEPSTREAM_*`` environment of a `Settings` (topics from `bench.naive_faust`).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any, Final, override

import orjson
import redis
import structlog
from quixstreams import Application
from quixstreams.sinks import BaseSink

from bench.naive_faust import BARS, DLQ, FIRST_RECORD_KEY, TRADES
from bench.per_record import Outcome, PerRecordCore, SinkBuffer
from schemas.deadletter import dead_letter
from streams.ops.logs import configure_logging
from streams.settings import Settings

log = structlog.get_logger(__name__)
STAGE: Final = "quix"


class PipelineSink(BaseSink):
    """Buffers accepted events and derived records; writes them all at each checkpoint."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.buffer = SinkBuffer(settings)
        self.loop = asyncio.new_event_loop()

    @override
    def add(
        self,
        value: Any,
        key: Any,
        timestamp: int,
        headers: Any,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        doc, out = value
        self.buffer.add_tick(doc)
        self.buffer.add(out)

    @override
    def flush(self) -> None:
        """Quix commits the offsets only after this returns: ack after the write."""
        taken = self.buffer.take()
        if taken is not None:
            self.loop.run_until_complete(self.buffer.write(taken))

    def close(self) -> None:
        self.loop.run_until_complete(self.buffer.close())
        self.loop.close()


class FirstRecord:
    """Stamps in Redis when the first record is handled (the harness's clock starts there)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.done = False

    def __call__(self, value: bytes) -> bytes:
        if not self.done:
            self.done = True
            client = redis.Redis.from_url(self.settings.redis_url)
            try:
                key = self.settings.redis_prefix + FIRST_RECORD_KEY
                client.set(key, time.time_ns(), nx=True, ex=86_400)
            finally:
                client.close()
        return value


def build(settings: Settings) -> tuple[Application, PipelineSink]:
    """The application and its sink, configured like the Faust worker where Quix allows."""
    app = Application(
        broker_address=settings.kafka_bootstrap,
        consumer_group=settings.group_id,
        auto_offset_reset="earliest",
        commit_interval=settings.commit_interval_s,
        state_dir=Path(tempfile.gettempdir()) / "sepstream-quix" / settings.group_id,
        use_changelog_topics=False,  # the state is in process memory, as in the Faust baseline
        loglevel="WARNING",
        consumer_extra_config={
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "fetch.max.bytes": 4_194_304,
        },
        producer_extra_config={"linger.ms": 5},
    )

    def topic(name: str) -> Any:
        return app.topic(
            settings.topic(name),
            key_deserializer="bytes",
            value_deserializer="bytes",
            key_serializer="bytes",
            value_serializer="bytes",
        )

    trades, dlq, bars = topic(TRADES), topic(DLQ), topic(BARS)
    core = PerRecordCore(settings)
    sink = PipelineSink(settings)

    def process(value: bytes) -> tuple[Any, Outcome]:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value, Outcome(reason="malformed_json")
        return doc, core.trade(doc, time.time_ns())

    def to_dead_letter(item: tuple[Any, Outcome]) -> bytes:
        doc, out = item
        return dead_letter(
            stage=STAGE,
            reason=str(out.reason),
            event=doc if isinstance(doc, dict) else None,
            original=None if isinstance(doc, dict) else bytes(doc),
        )

    def bar_records(item: tuple[Any, Outcome]) -> list[bytes]:
        return [b.encode(bars_out=time.time_ns()) for b in item[1].bars]

    sdf = app.dataframe(trades).apply(FirstRecord(settings)).apply(process)
    sdf.filter(lambda item: item[1].reason is not None).apply(to_dead_letter).to_topic(dlq)
    good = sdf.filter(lambda item: item[1].reason is None)
    good.filter(lambda item: bool(item[1].bars)).apply(bar_records, expand=True).to_topic(bars)
    good.sink(sink)
    return app, sink


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    app, sink = build(settings)
    log.info("quix streams app", group=settings.group_id)
    try:
        app.run()  # until SIGTERM/SIGINT: Quix then commits what its sinks flushed
    finally:
        sink.close()


if __name__ == "__main__":
    main()
