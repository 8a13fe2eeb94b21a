"""Topics and offsets: create what a worker needs, read log-end and committed offsets, read
a range of records back. Offsets are always asked for with explicit partitions, which
works on Apache Kafka and on brokers that cannot list a group's topics (Tansu)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import faust
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.kafka.clients import kafka_client_kwargs, start_client, stop_consumer
from streams.settings import Settings
from streams.topics import TOPIC_NAMES, hot_topics

Offsets = dict[TopicPartition, int]


log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **kafka_client_kwargs(settings)
    )
    await start_client(admin)
    try:
        yield admin
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def offsets_consumer(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        **kafka_client_kwargs(settings),
    )
    await start_client(consumer)
    try:
        yield consumer
    finally:
        await stop_consumer(consumer)


async def ensure_topics(settings: Settings) -> None:
    """Create the hot topics with the configured partitions (the worker would, later)."""
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, settings.partitions, settings.replication_factor)
            for name in hot_topics(settings).values()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)


async def ensure_compacted_topic(settings: Settings, topic: str) -> str:
    """Create `topic` (namespaced) compacted with one partition if it is missing: the
    latest-value-per-key topics (model libraries, subscriptions). Returns its name."""
    name = settings.topic(topic)
    rf = settings.replication_factor
    async with admin_client(settings) as admin:
        if name not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name, 1, rf, topic_configs={"cleanup.policy": "compact"})]
                )
    return name


def app_topics(app: faust.App, settings: Settings) -> dict[str, NewTopic]:
    """Every topic a worker of `app` reads or writes: its agents' channels, its tables'
    changelogs and Faust's leader topic, with the partitions and configs Faust would give."""
    channels: list[Any] = [*app.topics, *(t.changelog_topic for t in app.tables.values())]
    rf = settings.replication_factor
    out: dict[str, NewTopic] = {}
    for channel in channels:
        configs = {str(k): str(v) for k, v in (channel.config or {}).items()}
        if channel.compacting:
            configs["cleanup.policy"] = "compact"
        if channel.retention:
            configs["retention.ms"] = str(int(channel.retention * 1000))
        for name in channel.topics:
            partitions = channel.partitions or settings.partitions
            out[name] = NewTopic(name, partitions, rf, topic_configs=configs)
    for name in hot_topics(settings).values():  # the dead-letter topic is only written
        out.setdefault(name, NewTopic(name, settings.partitions, rf))
    leader = f"{app.conf.id}-__assignor-__leader"
    out.setdefault(leader, NewTopic(leader, 1, rf))
    return out


async def ensure_app_topics(app: faust.App, settings: Settings, timeout_s: float = 60.0) -> None:
    """Create what is missing of `app_topics` and wait until the cluster lists them all.

    Run before the worker starts: Faust's producer learns topics from the metadata it
    fetches at start, and a table write to a changelog topic it does not know fails
    (`'NoneType' object is not iterable` in the partitioner) on a brand-new cluster.
    """
    wanted = app_topics(app, settings)
    async with admin_client(settings) as admin:
        missing = [t for name, t in wanted.items() if name not in set(await admin.list_topics())]
        if missing:
            log.info("creating topics", topics=sorted(t.name for t in missing))
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            described = {t["topic"]: t for t in await admin.describe_topics(list(wanted))}
            pending = sorted(
                name
                for name, spec in wanted.items()
                if name not in described
                or described[name]["error_code"] != 0
                or len(described[name]["partitions"]) < spec.num_partitions
            )
            if not pending:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topics not ready after {timeout_s:.0f} s: {pending}")
            await asyncio.sleep(0.2)


def partitions_of(topic: str, settings: Settings) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(settings.partitions)]


async def end_offsets(settings: Settings, topics: list[str], timeout_s: float = 5.0) -> Offsets:
    """Log-end offsets of every partition of `topics` (see `true_end_offsets`)."""
    tps = [tp for t in topics for tp in partitions_of(t, settings)]
    return await true_end_offsets(
        settings.kafka_bootstrap, tps, timeout_s, **kafka_client_kwargs(settings)
    )


async def true_end_offsets(
    bootstrap: str, tps: Sequence[TopicPartition], timeout_s: float = 5.0, **client: Any
) -> Offsets:
    """Log-end offsets, taken from a fetch's high-water mark.

    ListOffsets(latest) alone is not trusted: the dev broker (Tansu 0.6) answers it with a
    figure below the true log end, while every fetch reports the right high-water mark.
    On Apache Kafka both agree, so this is correct everywhere.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **client)
    try:
        await start_client(consumer)
        listed: Offsets = {
            tp: int(o or 0) for tp, o in (await consumer.end_offsets(list(tps))).items()
        }
        consumer.assign(list(tps))
        for tp in tps:
            consumer.seek(tp, listed[tp])
        out: Offsets = {}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(out) < len(tps) and asyncio.get_running_loop().time() < deadline:
            missing = [tp for tp in tps if tp not in out]
            await consumer.getmany(*missing, timeout_ms=100, max_records=1)
            for tp in missing:
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    out[tp] = max(highwater, listed[tp])
        return {tp: out.get(tp, listed[tp]) for tp in tps}
    finally:
        await stop_consumer(consumer)


async def committed_offsets(settings: Settings, group: str, topics: list[str]) -> Offsets:
    tps = [tp for t in topics for tp in partitions_of(t, settings)]
    async with admin_client(settings) as admin:
        meta = await admin.list_consumer_group_offsets(group, partitions=tps)
    return {tp: (m.offset if m.offset >= 0 else 0) for tp, m in meta.items()}


@dataclass(frozen=True)
class Lag:
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def messages(self) -> int:
        return max(0, self.end - self.committed)


async def group_lag(settings: Settings, group: str, topics: list[str]) -> list[Lag]:
    ends, committed = await asyncio.gather(
        end_offsets(settings, topics), committed_offsets(settings, group, topics)
    )
    return [
        Lag(tp.topic, tp.partition, committed.get(tp, 0), end)
        for tp, end in sorted(ends.items(), key=lambda kv: (kv[0].topic, kv[0].partition))
    ]


async def read_range(
    settings: Settings, start: Offsets, end: Offsets, idle_timeout_s: float = 10.0
) -> AsyncIterator[tuple[TopicPartition, bytes]]:
    """Every record value in [start, end) per partition, then stop.

    A partition that yields nothing for `idle_timeout_s` before reaching its end (records
    compacted or deleted meanwhile) ends the read instead of hanging it.
    """
    todo = {tp: (start.get(tp, 0), e) for tp, e in end.items() if e > start.get(tp, 0)}
    if not todo:
        return
    loop = asyncio.get_running_loop()
    async with offsets_consumer(settings) as consumer:
        consumer.assign(list(todo))
        for tp, (s, _) in todo.items():
            consumer.seek(tp, s)
        remaining = dict(todo)
        last_progress = loop.time()
        while remaining and loop.time() - last_progress < idle_timeout_s:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                if not records:
                    continue
                last_progress = loop.time()
                stop = remaining[tp][1]
                for rec in records:
                    if rec.offset < stop:
                        yield tp, rec.value
                if records[-1].offset >= stop - 1:
                    remaining.pop(tp)


async def count_events(settings: Settings, topic: str, start: Offsets, end: Offsets) -> int:
    """Σ of `n` over the batch records of `topic` in the range (events, not records)."""
    total = 0
    own = {tp: o for tp, o in end.items() if tp.topic == topic}
    async for _, value in read_range(settings, start, own):
        total += int(orjson.loads(value).get("n", 1))
    return total


async def dead_letter_reasons(settings: Settings, start: Offsets, end: Offsets) -> Counter[str]:
    topic = settings.topic(TOPIC_NAMES["dlq"])
    own = {tp: o for tp, o in end.items() if tp.topic == topic}
    reasons: Counter[str] = Counter()
    async for _, value in read_range(settings, start, own):
        doc = orjson.loads(value)
        reasons[f"{doc.get('stage')}:{doc.get('reason')}"] += 1
    return reasons
