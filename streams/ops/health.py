"""Data health per instrument, for `sepstream status`, `/freshness` and the alert gauges.

- Freshness: seconds since the newest trade or quote of each instrument was received
  (`ts_recv`), from the Redis latest-state hashes the Redis sink writes. Those expire
  (`redis_trade_ttl_s`), so an instrument listed in `{prefix}instruments` without one falls
  back to its newest row in TimescaleDB; an instrument with neither (bars-only input) has
  no freshness.
- Quality: accepted / (accepted + dead-lettered) per instrument over the last window,
  counted from the topics themselves (events of `md.events.v1` records vs `validate`
  dead letters on `md.dlq.v1`, the window found with `offsets_for_times`), so it needs no
  counter in the validate stage and is the same whichever worker did the work.
- Read-path hit ratio: the `{prefix}stats:readpath` hash (`requests` and `{tier}:{result}`
  counters) that the read path (`streams.query.bars`: `sepstream bars`, `/bars`) increments;
  absent until something reads.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from streams.kafka.admin import end_offsets, offsets_consumer, read_range
from streams.ops.consumer_lag import judged
from streams.settings import Settings
from streams.stores.connections import pg_connect, redis_client
from streams.topics import TOPIC_NAMES

READPATH_KEY = "stats:readpath"  # under the namespace's Redis prefix


@dataclass(frozen=True)
class Freshness:
    venue: str
    symbol: str
    age_s: float | None
    source: str  # redis:trade | redis:quote | timescaledb:ticks | timescaledb:quotes | none
    stale: bool | None  # None when the age is unknown

    def as_dict(self) -> dict[str, Any]:
        return {
            "venue": self.venue,
            "symbol": self.symbol,
            "age_s": self.age_s,
            "source": self.source,
            "stale": self.stale,
        }


@dataclass(frozen=True)
class Quality:
    venue: str
    symbol: str
    accepted: int
    rejected: int
    threshold: float

    @property
    def score(self) -> float | None:
        total = self.accepted + self.rejected
        return self.accepted / total if total else None

    @property
    def alert(self) -> bool:
        score = self.score
        return score is not None and score < self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "venue": self.venue,
            "symbol": self.symbol,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "score": self.score,
            "alert": self.alert,
        }


def _split(key: str) -> tuple[str, str]:
    venue, _, symbol = key.partition(":")
    return venue, symbol


async def freshness(settings: Settings, now: float | None = None) -> list[Freshness]:
    """Every instrument the Redis sink has seen, with the age of its newest receipt."""
    now = time.time() if now is None else now
    p = settings.redis_prefix
    client = redis_client(settings)
    try:
        keys = sorted(
            k.decode() if isinstance(k, bytes) else k
            for k in await client.smembers(f"{p}instruments")
        )
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(f"{p}trade:{key}", "ts_recv")
            pipe.hget(f"{p}quote:{key}", "ts_recv")
        got = await pipe.execute() if keys else []
    finally:
        await client.aclose()
    found: dict[str, tuple[int, str]] = {}
    for i, key in enumerate(keys):
        for raw, source in ((got[2 * i], "redis:trade"), (got[2 * i + 1], "redis:quote")):
            if raw is not None and (key not in found or int(raw) > found[key][0]):
                found[key] = (int(raw), source)
    missing = [k for k in keys if k not in found]
    if missing:
        found.update(await _stored_receipts(settings, missing))
    out = []
    for key in keys:
        venue, symbol = _split(key)
        if key in found:
            ns, source = found[key]
            age = max(0.0, now - ns / 1e9)
            out.append(Freshness(venue, symbol, age, source, age > settings.freshness_alert_s))
        else:
            out.append(Freshness(venue, symbol, None, "none", None))
    return out


async def _stored_receipts(settings: Settings, keys: list[str]) -> dict[str, tuple[int, str]]:
    """Newest `ts_recv_ns` in TimescaleDB for instruments whose Redis state expired."""
    schema = settings.pg_schema
    out: dict[str, tuple[int, str]] = {}
    try:
        conn = await pg_connect(settings, "reader", timeout=5)
    except (OSError, asyncpg.PostgresError):
        return out
    try:
        for table in ("ticks", "quotes"):
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{table}"):
                continue
            for key in keys:
                venue, symbol = _split(key)
                ns = await conn.fetchval(
                    f"SELECT ts_recv_ns FROM {schema}.{table} WHERE venue = $1 AND symbol = $2 "
                    "ORDER BY ts DESC LIMIT 1",
                    venue,
                    symbol,
                )
                if ns is not None and (key not in out or ns > out[key][0]):
                    out[key] = (int(ns), f"timescaledb:{table}")
    finally:
        await conn.close()
    return out


async def quality(settings: Settings, window_s: float | None = None) -> list[Quality]:
    """Accepted vs dead-lettered events per instrument over the last `window_s` seconds."""
    window_s = settings.quality_window_s if window_s is None else window_s
    events = settings.topic(TOPIC_NAMES["events"])
    dlq = settings.topic(TOPIC_NAMES["dlq"])
    end = await end_offsets(settings, [events, dlq])
    since_ms = int((time.time() - window_s) * 1000)
    async with offsets_consumer(settings) as consumer:
        found = await consumer.offsets_for_times(dict.fromkeys(end, since_ms))
    start = {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in end}
    accepted: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    own = {tp: o for tp, o in end.items() if tp.topic == events}
    async for _, value in read_range(settings, start, own):
        doc = orjson.loads(value)
        accepted[f"{doc.get('venue')}:{doc.get('symbol')}"] += int(doc.get("n", 1))
    own = {tp: o for tp, o in end.items() if tp.topic == dlq}
    async for _, value in read_range(settings, start, own):
        doc = orjson.loads(value)
        if doc.get("stage") != "validate":
            continue
        event = doc.get("event") or {}
        if event.get("venue") and event.get("symbol"):
            rejected[f"{event['venue']}:{event['symbol']}"] += 1
        else:  # undecodable record: its key, when it names an instrument
            rejected[str(doc.get("key") or "unknown:unknown")] += 1
    return [
        Quality(*_split(key), accepted[key], rejected[key], settings.quality_alert)
        for key in sorted(set(accepted) | set(rejected))
    ]


async def readpath_ratio(settings: Settings) -> dict[str, Any]:
    """Hit ratios of the read path per tier, from the `{tier}:{result}` counters it keeps;
    `ratio` is the cache's (Redis) share of requests, None until something was read."""
    client = redis_client(settings)
    try:
        raw = await client.hgetall(f"{settings.redis_prefix}{READPATH_KEY}")
    finally:
        await client.aclose()
    fields = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
    requests = fields.pop("requests", 0)
    tiers: dict[str, dict[str, Any]] = {}
    for name, count in fields.items():
        tier, _, result = name.partition(":")
        tiers.setdefault(tier, {"hit": 0, "miss": 0, "error": 0})[result] = count
    for counts in tiers.values():
        asked = counts["hit"] + counts["miss"] + counts["error"]
        counts["ratio"] = counts["hit"] / asked if asked else None
    redis_hits = tiers.get("redis", {}).get("hit", 0)
    return {
        "key": f"{settings.redis_prefix}{READPATH_KEY}",
        "requests": requests,
        "ratio": redis_hits / requests if requests else None,
        "tiers": tiers,
    }


async def report(settings: Settings, services: dict[str, Any]) -> dict[str, Any]:
    """What `sepstream status` adds to the service check: lag verdicts per group, read-path
    hit ratio, freshness and quality per instrument (each only where its store is up)."""

    doc: dict[str, Any] = {}
    if services["kafka"]["ok"]:
        doc["lag_groups"] = (await judged(settings)).summary()
        doc["quality"] = {
            "window_s": settings.quality_window_s,
            "alert_below": settings.quality_alert,
            "instruments": [q.as_dict() for q in await quality(settings)],
        }
    if services["redis"]["ok"]:
        doc["readpath"] = await readpath_ratio(settings)
        doc["freshness"] = {
            "alert_after_s": settings.freshness_alert_s,
            "instruments": [f.as_dict() for f in await freshness(settings)],
        }
    return doc
