"""Consumer lag of every group that reads this namespace's topics: sampled, judged, kept.

Which groups: every consumer group on the broker that has committed an offset on at least
one partition of the namespace's hot topics (the worker's group, replay groups, anyone
else's consumer), and for each of them every partition of the topics it committed on. A
namespace's topics carry its name, group ids need not, so groups are found by their
commits rather than by their names. Groups without such commits are re-checked only every
`rediscover_every` samples, which keeps a broker with many unrelated groups cheap.

Offsets are asked for with explicit partitions (works on every broker); the log end is the
fetch high-water mark (see `streams.kafka.admin.true_end_offsets`); lag in seconds is the age
of the record at the committed offset, read with a fetch. The verdicts come from the pure
rules in `kernels.lag_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from kernels.lag_status import Observation, Status, evaluate_group, worst
from streams.kafka import fetchwait
from streams.kafka.clients import kafka_client_kwargs, start_client, stop_consumer
from streams.ops.metrics import GROUP_LAG_STATUS, LAG_MESSAGES, LAG_SECONDS, LAG_STATUS
from streams.settings import Settings
from streams.topics import hot_topics

log = structlog.get_logger(__name__)
_CONCURRENCY = 8  # offset fetches in flight at once


@dataclass(frozen=True)
class RawPartition:
    """One partition for one group at one moment, as the broker told it."""

    committed: int | None  # None: the group never committed here
    start: int  # log start offset
    end: int  # log end offset (fetch high-water mark)
    ts_ms: int | None  # timestamp of the record at the committed position, if one exists

    @property
    def position(self) -> int:
        """Where the group would read next (a missing commit reads from the log start)."""
        return self.start if self.committed is None else max(self.committed, self.start)


@dataclass(frozen=True)
class RawSample:
    at: float  # wall-clock seconds
    members: dict[str, int | None]
    offsets: dict[str, dict[TopicPartition, RawPartition]]


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int
    lag_s: float | None
    status: Status
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
            "lag_s": self.lag_s,
            "status": self.status.name,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GroupLag:
    group: str
    members: int | None
    partitions: list[PartitionLag]

    @property
    def status(self) -> Status:
        return worst([p.status for p in self.partitions])

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def lag_s(self) -> float | None:
        known = [p.lag_s for p in self.partitions if p.lag_s is not None]
        return max(known) if known else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "members": self.members,
            "status": self.status.name,
            "lag": self.lag,
            "lag_s": self.lag_s,
            "partitions": [p.as_dict() for p in self.partitions],
        }


@dataclass(frozen=True)
class LagSnapshot:
    at: float
    window: int
    groups: list[GroupLag]

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "window": self.window,
            "groups": [g.as_dict() for g in self.groups],
        }

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per group: worst status, total lag, oldest unconsumed record's age."""
        return {
            g.group: {"status": g.status.name, "lag": g.lag, "lag_s": g.lag_s} for g in self.groups
        }


class LagCollector:
    """Samples committed and end offsets; keeps one admin client and one group-less
    consumer open between samples."""

    def __init__(
        self,
        settings: Settings,
        *,
        topics: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
        rediscover_every: int = 12,
        fetch_timeout_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.topics = list(topics) if topics is not None else list(hot_topics(settings).values())
        self.fixed_groups = list(groups) if groups is not None else None
        self.rediscover_every = rediscover_every
        self.fetch_timeout_s = fetch_timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._unrelated: dict[str, int] = {}  # group -> samples since it was last checked

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:  # the admin started, the consumer did not: close the admin
            await self.stop()
            raise

    async def _start(self) -> None:
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap, **kafka_client_kwargs(self.settings)
        )
        await start_client(self._admin)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a committed offset below the log start
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=65_536,  # only the first record matters
            **kafka_client_kwargs(self.settings),
        )
        await start_client(self._consumer)
        fetchwait.adapt(self._consumer, "lag")  # it reads at committed offsets, behind

    async def stop(self) -> None:
        if self._consumer is not None:
            await stop_consumer(self._consumer)
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def __aenter__(self) -> LagCollector:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _partitions(self) -> list[TopicPartition]:
        """Every partition of the watched topics that exist, from fresh metadata (a
        partition added later shows up). Only listed topics are described: a metadata
        request for a missing topic would create it on a broker that auto-creates."""
        assert self._admin is not None, "start() first"
        existing = set(await self._admin.list_topics())
        wanted = [t for t in self.topics if t in existing]
        if not wanted:
            return []
        out = []
        for described in await self._admin.describe_topics(wanted):
            if described.get("error_code", 0) != 0:
                continue
            parts = sorted(int(p["partition"]) for p in described.get("partitions", []))
            out += [TopicPartition(described["topic"], p) for p in parts]
        return sorted(out)

    async def _candidate_groups(self) -> list[str]:
        assert self._admin is not None
        if self.fixed_groups is not None:
            return self.fixed_groups
        listed = [str(g[0]) for g in await self._admin.list_consumer_groups()]
        out = []
        for group in listed:
            skipped = self._unrelated.get(group)
            if skipped is None or skipped + 1 >= self.rediscover_every:
                out.append(group)
            else:
                self._unrelated[group] = skipped + 1
        return out

    async def _committed(
        self, groups: Iterable[str], tps: list[TopicPartition]
    ) -> dict[str, dict[TopicPartition, int | None]]:
        """Committed offsets per group on the partitions of the topics it committed on."""
        assert self._admin is not None
        admin = self._admin
        gate = asyncio.Semaphore(_CONCURRENCY)
        asked = set(tps)

        async def one(group: str) -> tuple[str, dict[TopicPartition, int | None]]:
            async with gate:
                try:
                    meta = await admin.list_consumer_group_offsets(group, partitions=tps)
                except Exception as exc:  # a group deleted meanwhile, a coordinator moving
                    log.debug("offsets not fetched", group=group, error=repr(exc))
                    return group, {}
            return group, {
                tp: (m.offset if m.offset >= 0 else None) for tp, m in meta.items() if tp in asked
            }

        found = await asyncio.gather(*(one(g) for g in groups))
        out: dict[str, dict[TopicPartition, int | None]] = {}
        for group, offsets in found:
            topics = {tp.topic for tp, o in offsets.items() if o is not None}
            if not topics:
                self._unrelated[group] = 0
                continue
            self._unrelated.pop(group, None)
            out[group] = {tp: o for tp, o in offsets.items() if tp.topic in topics}
        return out

    async def _members(self, groups: list[str]) -> dict[str, int | None]:
        """Members per group; one request per group (groups may have different
        coordinators, and the dev broker mis-encodes a reply describing several)."""
        assert self._admin is not None
        admin = self._admin
        gate = asyncio.Semaphore(_CONCURRENCY)

        async def one(group: str) -> int | None:
            async with gate:
                try:
                    responses = await admin.describe_consumer_groups([group])
                except Exception as exc:
                    log.debug("group not described", group=group, error=repr(exc))
                    return None
            for response in responses:
                for described in response.to_object().get("groups", []):
                    if described.get("error_code", 0) == 0 and described.get("group") == group:
                        return len(described.get("members") or [])
            return None

        counts = await asyncio.gather(*(one(g) for g in groups))
        return dict(zip(groups, counts, strict=True))

    async def _probe(
        self, targets: dict[TopicPartition, int]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Seek each partition to its target and fetch once: (high-water marks, timestamp
        of the first record at or after the target where there is one)."""
        assert self._consumer is not None
        consumer = self._consumer
        consumer.assign(list(targets))
        for tp, offset in targets.items():
            consumer.seek(tp, offset)
        highwater: dict[TopicPartition, int] = {}
        stamps: dict[TopicPartition, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fetch_timeout_s
        pending = set(targets)
        while pending and loop.time() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=100)
            for tp, records in batch.items():
                if records and tp not in stamps:
                    stamps[tp] = int(records[0].timestamp)
            for tp in list(pending):
                hw = consumer.highwater(tp)
                if hw is None:
                    continue
                highwater[tp] = hw
                if tp in stamps or targets[tp] >= hw:
                    pending.discard(tp)
        return highwater, stamps

    async def sample(self) -> RawSample:
        assert self._consumer is not None, "start() first"
        tps = await self._partitions()
        committed = await self._committed(await self._candidate_groups(), tps) if tps else {}
        members = await self._members(sorted(committed))
        used = sorted({tp for offsets in committed.values() for tp in offsets})
        if not used:
            return RawSample(time.time(), members, {})
        starts = {
            tp: int(o or 0) for tp, o in (await self._consumer.beginning_offsets(used)).items()
        }
        listed = {tp: int(o or 0) for tp, o in (await self._consumer.end_offsets(used)).items()}
        wanted: dict[TopicPartition, set[int]] = defaultdict(set)
        for by_group in committed.values():
            for tp, o in by_group.items():
                wanted[tp].add(starts[tp] if o is None else max(o, starts[tp]))
        ends = dict(listed)
        stamps: dict[tuple[TopicPartition, int], int] = {}
        rounds = max((len(v) for v in wanted.values()), default=0)
        ordered = {tp: sorted(v) for tp, v in wanted.items()}
        # Round 0 fetches every partition (its high-water mark is the log end); later rounds
        # only those where several groups stand at different offsets.
        for k in range(rounds):
            targets = {tp: at[k] for tp, at in ordered.items() if len(at) > k}
            highwater, found = await self._probe(targets)
            for tp, hw in highwater.items():
                ends[tp] = max(ends[tp], hw)
            for tp, ts in found.items():
                stamps[(tp, targets[tp])] = ts
        at = time.time()
        offsets = {
            group: {
                tp: RawPartition(
                    committed=o,
                    start=starts[tp],
                    end=ends[tp],
                    ts_ms=stamps.get((tp, starts[tp] if o is None else max(o, starts[tp]))),
                )
                for tp, o in by_tp.items()
            }
            for group, by_tp in committed.items()
        }
        return RawSample(at, members, offsets)


@dataclass
class LagMonitor:
    """Windows of observations per group and partition, the latest verdicts and a bounded
    history of per-group totals (for charts)."""

    collector: LagCollector
    window: int
    history_size: int = 720
    windows: dict[str, dict[TopicPartition, deque[Observation]]] = field(default_factory=dict)
    latest: LagSnapshot | None = None
    history: deque[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.history_size)

    async def poll(self) -> LagSnapshot:
        return self.observe(await self.collector.sample())

    def observe(self, raw: RawSample) -> LagSnapshot:
        """Add one sample to the windows and judge every partition."""
        for gone in set(self.windows) - set(raw.offsets):
            del self.windows[gone]
        groups = []
        for group in sorted(raw.offsets):
            parts = raw.offsets[group]
            mine = self.windows.setdefault(group, {})
            for tp in set(mine) - set(parts):
                del mine[tp]
            for tp, p in parts.items():
                mine.setdefault(tp, deque(maxlen=self.window)).append(
                    Observation(raw.at, p.position, p.end)
                )
            verdicts = evaluate_group(mine, size=self.window, members=raw.members.get(group))
            rows = []
            for tp in sorted(parts, key=lambda t: (t.topic, t.partition)):
                p, v = parts[tp], verdicts[tp]
                lag_s: float | None
                if v.lag == 0:
                    lag_s = 0.0
                elif p.ts_ms is None:
                    lag_s = None
                else:
                    lag_s = max(0.0, raw.at - p.ts_ms / 1000)
                rows.append(
                    PartitionLag(
                        tp.topic, tp.partition, p.committed, p.end, v.lag, lag_s, v.status, v.reason
                    )
                )
            groups.append(GroupLag(group, raw.members.get(group), rows))
        snap = LagSnapshot(raw.at, self.window, groups)
        self.latest = snap
        self.history.append({"at": raw.at, "groups": snap.summary()})
        return snap

    def as_dict(self) -> dict[str, Any]:
        return {
            "latest": self.latest.as_dict() if self.latest else None,
            "history": list(self.history),
        }


_exported: set[tuple[str, str, str]] = set()
_exported_groups: set[str] = set()


def export_metrics(snap: LagSnapshot) -> None:
    """Set the lag gauges from a snapshot and drop the series of partitions now gone."""
    seen: set[tuple[str, str, str]] = set()
    for g in snap.groups:
        GROUP_LAG_STATUS.labels(g.group).set(int(g.status))
        for p in g.partitions:
            labels = (g.group, p.topic, str(p.partition))
            seen.add(labels)
            LAG_MESSAGES.labels(*labels).set(p.lag)
            LAG_STATUS.labels(*labels).set(int(p.status))
            if p.lag_s is not None:
                LAG_SECONDS.labels(*labels).set(p.lag_s)
    for labels in _exported - seen:
        for gauge in (LAG_MESSAGES, LAG_STATUS, LAG_SECONDS):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
    groups = {g.group for g in snap.groups}
    for group in _exported_groups - groups:
        with contextlib.suppress(KeyError):
            GROUP_LAG_STATUS.remove(group)
    _exported.clear()
    _exported.update(seen)
    _exported_groups.clear()
    _exported_groups.update(groups)


_monitors: weakref.WeakKeyDictionary[Any, LagMonitor] = weakref.WeakKeyDictionary()


def attach(app: Any, monitor: LagMonitor) -> LagMonitor:
    """Make `monitor` the one the app's web routes show (see `monitor_of`)."""
    _monitors[app] = monitor
    return monitor


def monitor_of(app: Any) -> LagMonitor | None:
    return _monitors.get(app)


async def judged(
    settings: Settings,
    *,
    groups: Sequence[str] | None = None,
    samples: int = 3,
    interval_s: float = 1.0,
) -> LagSnapshot:
    """A one-shot verdict without a running worker: `samples` samples `interval_s` apart,
    judged on a window of exactly that many (`sepstream lag`, `sepstream status`)."""
    monitor = LagMonitor(LagCollector(settings, groups=groups), window=samples)
    async with monitor.collector:
        snap = await monitor.poll()
        for _ in range(samples - 1):
            await asyncio.sleep(interval_s)
            snap = await monitor.poll()
    return snap
