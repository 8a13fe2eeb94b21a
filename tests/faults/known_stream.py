"""A known, paced synthetic stream through a real worker, and the checks that it all arrived.

The fault tests produce a stream whose every event they know, break something while it
flows, and then require: every produced event stored once (ticks by natural key, no
duplicate, no loss) or dead-lettered, 1m bars equal to a NumPy computation over the same
events, the Redis latest trade equal to each instrument's last event, the group's lag 0.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
import orjson
import redis.asyncio as aioredis

from streams.kafka.admin import dead_letter_reasons, end_offsets, ensure_topics, group_lag
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.sources import synthetic
from streams.topics import hot_topics
from tests.conftest import eventually
from tests.e2e.test_pipeline import MIN, _reference_bars, _stored_bars

INSTRUMENTS = (
    synthetic.DEFAULT_INSTRUMENTS[0],
    synthetic.DEFAULT_INSTRUMENTS[2],
    synthetic.DEFAULT_INSTRUMENTS[4],
)
TickKey = tuple[str, str, int, int]  # venue, symbol, trade_id, ts_event


@dataclass
class KnownStream:
    """`events` trades of INSTRUMENTS over the last `minutes` simulated minutes, fed at `pace`
    events per wall-clock second by `feed()` (a task, so faults can happen meanwhile).
    With `hold_after`, the feed stops after that many events until `release` is set."""

    settings: Settings
    events: int
    pace: float
    seed: int = 5
    minutes: int = 10
    hold_after: int | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    generated: list[tuple[Any, dict[str, npt.NDArray[Any]]]] = field(default_factory=list)
    start_ns: int = 0
    produced: int = 0
    producer_errors: int = 0

    def __post_init__(self) -> None:
        self.start_ns = (time.time_ns() // MIN - self.minutes - 1) * MIN
        self.generated = synthetic.generate(
            self.seed,
            self.events,
            start_ns=self.start_ns,
            rate_per_s=self.rate,
            instruments=INSTRUMENTS,
        )

    @property
    def rate(self) -> float:
        return self.events / (self.minutes * 60)

    async def prepare(self) -> dict[Any, int]:
        """Topics created; returns the end offsets before anything is produced."""
        await ensure_topics(self.settings)
        names = hot_topics(self.settings)
        return await end_offsets(self.settings, list(names.values()))

    async def feed(self) -> int:
        async with BatchingProducer(self.settings, hot_topics(self.settings)["trades"]) as prod:
            self.produced = await synthetic.produce(
                prod,
                self.seed,
                self.events,
                start_ns=self.start_ns,
                rate_per_s=self.rate,
                pace=self.pace,
                instruments=INSTRUMENTS,
                hold=self._hold,
            )
            await prod.flush()
            self.producer_errors = prod.send_errors
        return self.produced

    async def _hold(self, sent: int) -> None:
        """Past `hold_after` events, wait for `release`: the fault then happens mid-stream
        however slow the machine is."""
        if self.hold_after is not None and sent >= self.hold_after:
            await self.release.wait()

    def tick_keys(self) -> Counter[TickKey]:
        out: Counter[TickKey] = Counter()
        for inst, cols in self.generated:
            ids, ts = cols["trade_id"].tolist(), cols["ts_event"].tolist()
            out.update((inst.venue, inst.symbol, i, t) for i, t in zip(ids, ts, strict=True))
        return out

    def last_trades(self) -> dict[str, dict[str, float]]:
        """Per `venue:symbol`, the last event (by event time, then arrival) as Redis holds it."""
        out = {}
        for inst, cols in self.generated:
            order = np.argsort(cols["ts_event"], kind="stable")
            i = int(order[-1])
            out[f"{inst.venue}:{inst.symbol}"] = {
                "ts_event": float(cols["ts_event"][i]),
                "trade_id": float(cols["trade_id"][i]),
                "price": float(cols["price"][i]),
                "size": float(cols["size"][i]),
            }
        return out

    def reference_bars(self) -> dict[tuple[str, str, int], tuple[float, ...]]:
        return _reference_bars(self.generated)


async def stored_ticks(pg: asyncpg.Connection, schema: str) -> Counter[TickKey]:
    if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.ticks"):
        return Counter()
    rows = await pg.fetch(f"SELECT venue, symbol, trade_id, ts_event_ns FROM {schema}.ticks")
    return Counter((r[0], r[1], r[2], r[3]) for r in rows)


async def tick_count(pg: asyncpg.Connection, schema: str) -> int:
    if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.ticks"):
        return 0
    return int(await pg.fetchval(f"SELECT count(*) FROM {schema}.ticks"))


async def total_lag(settings: Settings) -> int:
    names = hot_topics(settings)
    topics = [names["trades"], names["events"], names["bars"]]
    return sum(x.messages for x in await group_lag(settings, settings.group_id, topics))


async def redis_latest(
    rds: aioredis.Redis, settings: Settings, keys: Sequence[str]
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        h = await rds.hgetall(f"{settings.redis_prefix}trade:{key}")
        out[key] = {
            name: float(h[name.encode()])
            for name in ("ts_event", "trade_id", "price", "size")
            if name.encode() in h
        }
    return out


def scrape(settings: Settings) -> dict[str, float]:
    """The worker's /metrics as {sample name with labels: value} (blocking; call in a thread)."""
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def metrics(settings: Settings) -> dict[str, float]:
    return await asyncio.to_thread(scrape, settings)


def _healthz(settings: Settings) -> tuple[int, dict[str, Any]]:
    url = f"http://{settings.web_host}:{settings.web_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


async def healthz(settings: Settings) -> tuple[int, dict[str, Any]]:
    """The worker's /healthz: (HTTP status, body)."""
    return await asyncio.to_thread(_healthz, settings)


async def assert_all_arrived(
    stream: KnownStream,
    pg: asyncpg.Connection,
    rds: aioredis.Redis,
    start: dict[Any, int],
    *,
    within: float = 90.0,
) -> None:
    """produced = stored + dead-lettered, no duplicate, bars exact, Redis latest, lag 0."""
    settings, schema = stream.settings, stream.settings.pg_schema
    want = stream.tick_keys()
    assert stream.produced == stream.events == sum(want.values())
    assert stream.producer_errors == 0, "records the producer failed to deliver are lost"

    async def ticks_done() -> bool:
        return await tick_count(pg, schema) >= stream.events and await total_lag(settings) == 0

    async def state() -> object:
        return {"ticks": await tick_count(pg, schema), "lag": await total_lag(settings)}

    await eventually(ticks_done, within=within, describe=state)
    stored = await stored_ticks(pg, schema)
    assert max(stored.values()) == 1, "duplicate tick rows"
    end = await end_offsets(settings, list(hot_topics(settings).values()))
    dead = await dead_letter_reasons(settings, start, end)
    assert sum(dead.values()) == 0, dead  # a clean stream: nothing is bad
    assert stored == want, (len(stored), len(want), len(set(want) - set(stored)))

    reference = stream.reference_bars()

    async def bars_done() -> dict[tuple[str, str, int], tuple[float, ...]] | None:
        got = await _stored_bars(pg, schema)
        return got if set(reference) <= set(got) else None

    bars = await eventually(bars_done, within=30)
    assert bars.keys() == reference.keys()
    for k, (o, h, lo, c, v, n) in reference.items():
        so, sh, sl, sc, sv, sn, _flags = bars[k]
        assert (so, sh, sl, sc, sn) == (o, h, lo, c, n), k
        assert np.isclose(sv, v, rtol=1e-12), k

    latest = stream.last_trades()

    async def redis_done() -> bool:
        return await redis_latest(rds, settings, list(latest)) == latest

    await eventually(
        redis_done, within=30, describe=lambda: redis_latest(rds, settings, list(latest))
    )
