"""The lag monitor against real consumer groups on the real broker, driven into each state.

Five groups read namespaced topics while a producer keeps writing: one keeps up (OK), one
consumes too slowly (WARNING), one commits one partition but never the other (ERROR on
that partition: the member is alive and its group commits elsewhere), one is closed while
behind (STOPPED), and one has read an idle topic to its end (OK with zero lag, although
its offsets never move). Windows are short (6 samples, 0.4 s apart).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from kernels.lag_status import Status
from streams.kafka.admin import ensure_topics
from streams.ops.consumer_lag import GroupLag, LagCollector, LagMonitor, LagSnapshot, export_metrics
from streams.ops.metrics import GROUP_LAG_STATUS, LAG_MESSAGES
from streams.settings import Settings

WINDOW = 6
INTERVAL_S = 0.4


def _consumer(settings: Settings, group: str, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
        heartbeat_interval_ms=1000,
    )
    return consumer


async def _produce(settings: Settings, topic: str, stop: asyncio.Event) -> None:
    """About 100 records/s into each of the topic's two partitions."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        i = 0
        while not stop.is_set():
            for p in (0, 1):
                for _ in range(10):
                    await producer.send(topic, b"x%d" % i, partition=p)
                    i += 1
            await producer.flush()
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()


async def _loop(step: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        await step()


@contextlib.asynccontextmanager
async def _running(*tasks: Awaitable[None]) -> AsyncIterator[None]:
    started = [asyncio.ensure_future(t) for t in tasks]
    try:
        yield
    finally:
        for t in started:
            t.cancel()
        await asyncio.gather(*started, return_exceptions=True)


async def test_each_state_on_real_groups(settings: Settings) -> None:
    settings = Settings.from_env({}, **{**settings.__dict__, "lag_window": WINDOW})
    await ensure_topics(settings)
    busy, idle = settings.topic("md.trades.v1"), settings.topic("md.signals.v1")
    g = {n: f"{settings.group_id}-{n}" for n in ("ok", "slow", "stalled", "stopped", "idle")}

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    for i in range(10):
        await producer.send_and_wait(idle, b"i%d" % i, partition=i % 2)
    await producer.stop()

    consumers = {
        "ok": _consumer(settings, g["ok"], busy),
        "slow": _consumer(settings, g["slow"], busy),
        "stalled": _consumer(settings, g["stalled"], busy),
        "stopped": _consumer(settings, g["stopped"], busy),
        "idle": _consumer(settings, g["idle"], idle),
    }
    try:
        await asyncio.gather(*(c.start() for c in consumers.values()))
        await _judge(settings, consumers, g, busy, idle)
    finally:
        for c in consumers.values():
            await c.stop()


async def _judge(
    settings: Settings,
    consumers: dict[str, AIOKafkaConsumer],
    g: dict[str, str],
    busy: str,
    idle: str,
) -> None:
    stop = asyncio.Event()
    stalled_tp = TopicPartition(busy, 1)
    first_commit = {n: asyncio.Event() for n in consumers}

    def stepper(name: str) -> Callable[[], Awaitable[None]]:
        c = consumers[name]

        async def step() -> None:
            if name == "slow":  # ~20 records/s of the ~200 produced, from each partition
                for tp in sorted(c.assignment()):
                    await c.getmany(tp, timeout_ms=50, max_records=1)
                await asyncio.sleep(0.1)
            else:
                await c.getmany(timeout_ms=100)
            if name == "stalled" and first_commit[name].is_set():
                # keeps consuming and committing partition 0; partition 1's commit is stuck
                await c.commit(
                    {tp: await c.position(tp) for tp in c.assignment() if tp != stalled_tp}
                )
            else:
                await c.commit()
            if c.assignment():
                first_commit[name].set()

        return step

    monitor = LagMonitor(LagCollector(settings, topics=[busy, idle]), WINDOW, history_size=50)

    async def statuses() -> dict[str, GroupLag]:
        snap: LagSnapshot = await monitor.poll()
        return {grp.group: grp for grp in snap.groups}

    async with (
        monitor.collector,
        _running(
            _produce(settings, busy, stop),
            *(_loop(stepper(n), stop) for n in consumers if n != "stopped"),
            _loop(stepper("stopped"), first_commit["stopped"]),
        ),
    ):
        await asyncio.wait_for(
            asyncio.gather(*(e.wait() for e in first_commit.values())), timeout=60
        )
        await asyncio.sleep(0.5)  # the stopped group's loop has ended: close it while behind
        await consumers["stopped"].stop()

        expected = {
            g["ok"]: Status.OK,
            g["slow"]: Status.WARNING,
            g["stalled"]: Status.ERROR,
            g["stopped"]: Status.STOPPED,
            g["idle"]: Status.OK,
        }
        seen: dict[str, GroupLag] = {}
        for _ in range(WINDOW * 6):
            seen = await statuses()
            got = {grp: seen[grp].status for grp in expected if grp in seen}
            if got == expected and all(
                len(monitor.windows[grp][tp]) == WINDOW
                for grp in expected
                for tp in monitor.windows[grp]
            ):
                break
            await asyncio.sleep(INTERVAL_S)
        stop.set()
        assert {grp: seen[grp].status for grp in expected if grp in seen} == expected, {
            grp: [(p.partition, p.status.name, p.lag, p.reason) for p in x.partitions]
            for grp, x in seen.items()
        }
        # other namespaces' groups never show up: only groups with commits on our topics
        assert set(seen) == set(expected)

        stalled = {p.partition: p for p in seen[g["stalled"]].partitions}
        assert stalled[1].status is Status.ERROR and stalled[1].lag > 0
        assert stalled[0].status is Status.OK
        assert stalled[1].lag_s is not None and stalled[1].lag_s > 0

        for name in ("slow", "stopped"):
            grp = seen[g[name]]
            assert grp.lag > 0 and grp.lag_s is not None and grp.lag_s > 0, grp
            assert all(p.end > (p.committed or 0) for p in grp.partitions)

        idle_group = seen[g["idle"]]
        assert [p.topic for p in idle_group.partitions] == [idle, idle]
        assert all(
            p.lag == 0 and p.lag_s == 0 and p.committed == p.end == 5 for p in idle_group.partitions
        )

        # gauges follow the snapshot
        export_metrics(monitor.latest or LagSnapshot(0, WINDOW, []))
        assert GROUP_LAG_STATUS.labels(g["stopped"])._value.get() == int(Status.STOPPED)
        assert LAG_MESSAGES.labels(g["idle"], idle, "0")._value.get() == 0
        assert len(monitor.history) >= WINDOW
        assert monitor.history[-1]["groups"][g["slow"]]["status"] == "WARNING"
