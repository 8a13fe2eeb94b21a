"""Which symbols the collectors collect, changed at runtime through a compacted control topic.

Why a topic: a running `sepstream collect` must take a new symbol, or drop one, without a
restart, and a restarted collector must come back with the same set. `md.control.
subscriptions` (namespaced like every topic, `cleanup.policy=compact`, one partition) keeps
the latest decision per instrument, so reading it from the beginning gives the current set.

Wire format (public: `sepstream symbols add|remove|list` writes and reads it, other tools
may too)::

    key   = b"binance:BTC-USDT"                       (venue:SYMBOL, like the hot topics)
    value = {"v": 1, "venue": "binance", "symbol": "BTC-USDT", "active": true,
             "ts": 1767225600000000000, "by": "ops@host"}
    value = null (a tombstone)                       forget the decision

Merge rule: a collector's own symbols (`--symbols`, else `SEPSTREAM_SYMBOLS`) are its
defaults; the latest record of an instrument overrides the default (`active: false` stops
even a default symbol), and a tombstone returns the instrument to its default. Records that
cannot be read are logged and counted (`sepstream_control_records_rejected{reason}`) and
change nothing.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import Counter as PromCounter

from schemas.events import SYMBOL_RE
from streams.kafka.admin import ensure_compacted_topic, true_end_offsets
from streams.kafka.clients import kafka_client_kwargs, start_client, stop_consumer
from streams.settings import Settings
from streams.topics import SUBSCRIPTIONS_TOPIC

log = structlog.get_logger(__name__)

VERSION: Final = 1
REJECTED: Final = PromCounter(
    "sepstream_control_records_rejected",
    "Subscription control records that could not be read, by reason",
    ["reason"],
)


class BadRecordError(ValueError):
    """A control record that is not a subscription; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Subscription:
    """One decision about one instrument: collect it (`active`) or not, since `ts` (ns)."""

    venue: str
    symbol: str
    active: bool
    ts: int
    by: str = ""

    @property
    def key(self) -> bytes:
        return record_key(self.venue, self.symbol)

    def encode(self) -> bytes:
        return orjson.dumps({"v": VERSION, **asdict(self)})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_key(venue: str, symbol: str) -> bytes:
    return f"{venue}:{symbol}".encode()


def split_key(key: bytes | None) -> tuple[str, str]:
    """`b"binance:BTC-USDT"` → ("binance", "BTC-USDT"); BadRecordError otherwise."""
    try:
        venue, sep, symbol = (key or b"").decode().partition(":")
    except UnicodeDecodeError:
        raise BadRecordError("bad_key", repr(key)) from None
    if not sep or not venue.isidentifier() or venue != venue.lower() or not SYMBOL_RE.match(symbol):
        raise BadRecordError("bad_key", repr(key))
    return venue, symbol


def decode(key: bytes | None, value: bytes) -> Subscription:
    """A record's subscription; BadRecordError when anything about it is off."""
    venue, symbol = split_key(key)
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadRecordError("bad_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise BadRecordError("not_object", type(doc).__name__)
    if doc.get("v") != VERSION:
        raise BadRecordError("unknown_version", repr(doc.get("v")))
    if doc.get("venue") != venue or doc.get("symbol") != symbol:
        raise BadRecordError("key_mismatch", f"{key!r} vs {doc.get('venue')}:{doc.get('symbol')}")
    active, ts, by = doc.get("active"), doc.get("ts"), doc.get("by", "")
    if not isinstance(active, bool):
        raise BadRecordError("bad_field", f"active={active!r}")
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise BadRecordError("bad_field", f"ts={ts!r}")
    if not isinstance(by, str):
        raise BadRecordError("bad_field", f"by={by!r}")
    return Subscription(venue, symbol, active, ts, by)


def effective_symbols(defaults: Sequence[str], decisions: Mapping[str, Subscription]) -> list[str]:
    """The merge rule: defaults, overridden per symbol by the topic's latest decision."""
    out = [s for s in defaults if s not in decisions or decisions[s].active]
    return list(dict.fromkeys([*out, *(s for s, d in decisions.items() if d.active)]))


def operator() -> str:
    """Who made a change, for the record and the log."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# ---- the topic ---------------------------------------------------------------------------
async def ensure_control_topic(settings: Settings) -> str:
    """Create the control topic (compacted, one partition) if it is missing; its name."""
    return await ensure_compacted_topic(settings, SUBSCRIPTIONS_TOPIC)


async def publish(
    settings: Settings, venue: str, symbols: Iterable[str], *, active: bool
) -> list[Subscription]:
    """Record one decision per symbol and wait for the broker's acknowledgement of each."""
    topic = await ensure_control_topic(settings)
    by = operator()
    changes = [Subscription(venue, s, active, time.time_ns(), by) for s in symbols]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=False,
        **kafka_client_kwargs(settings),
    )
    try:
        await start_client(producer)
        for change in changes:
            await producer.send_and_wait(topic, key=change.key, value=change.encode())
            log.info("subscription changed", topic=topic, **change.as_dict())
    finally:
        await producer.stop()
    return changes


class ControlReader:
    """Reads the control topic from its beginning and folds it into the latest decisions."""

    def __init__(self, settings: Settings, venue: str | None = None) -> None:
        self.settings = settings
        self.venue = venue  # None: every venue's decisions
        self.decisions: dict[tuple[str, str], Subscription] = {}
        self.rejected = 0

    def fold(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one record; True when it concerns our venue (the set may have changed)."""
        try:
            venue, symbol = split_key(key)
            if self.venue is not None and venue != self.venue:
                return False
            if value is None:  # a tombstone: back to the default
                return self.decisions.pop((venue, symbol), None) is not None
            self.decisions[(venue, symbol)] = decode(key, value)
            return True
        except BadRecordError as exc:
            self.rejected += 1
            REJECTED.labels(exc.reason).inc()
            log.warning("control record ignored", reason=exc.reason, error=str(exc), key=key)
            return False

    def of_venue(self, venue: str) -> dict[str, Subscription]:
        return {s: d for (v, s), d in self.decisions.items() if v == venue}

    async def open(
        self,
    ) -> tuple[AIOKafkaConsumer, list[TopicPartition], dict[TopicPartition, int]]:
        """A consumer at the beginning of every partition, and the log ends to catch up to."""

        topic = await ensure_control_topic(self.settings)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_client_kwargs(self.settings),
        )
        try:
            await start_client(consumer)
            await consumer.topics()  # metadata, so the partitions are known
            parts = consumer.partitions_for_topic(topic) or {0}
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = await true_end_offsets(
                self.settings.kafka_bootstrap, tps, **kafka_client_kwargs(self.settings)
            )
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
        except BaseException:
            await stop_consumer(consumer)
            raise
        return consumer, tps, ends

    async def poll(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
        """Fold what one fetch brings; True when our venue's decisions may have changed."""
        changed = False
        batch = await consumer.getmany(*tps, timeout_ms=500)
        for records in batch.values():
            for rec in records:
                changed |= self.fold(rec.key, rec.value)
        return changed

    async def read_all(self) -> dict[tuple[str, str], Subscription]:
        """The decisions as of now: read from the beginning up to the current log end."""
        consumer, tps, ends = await self.open()
        try:
            deadline = asyncio.get_running_loop().time() + 30.0
            while not await _at(consumer, tps, ends):
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"control topic not read to its end: {ends}")
                await self.poll(consumer, tps)
        finally:
            await stop_consumer(consumer)
        return dict(self.decisions)


async def _at(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int]
) -> bool:
    for tp in tps:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


async def follow(
    settings: Settings,
    venue: str,
    defaults: Sequence[str],
    apply: Callable[[list[str]], Awaitable[None]],
    ready: asyncio.Event,
) -> None:
    """Feed `venue`'s effective symbol set to `apply` at start and on every change, forever.

    Not a consumer group: every collector of the venue must see every decision, and a
    restarted one must find them again, so the (small, compacted) topic is read from its
    beginning; the set is applied once the log end seen at start is reached (then `ready`
    is set), and again after each record that changes it. Broker errors are retried with
    backoff, re-reading from the beginning.
    """
    delay = 0.5
    while True:
        consumer: AIOKafkaConsumer | None = None
        try:
            reader = ControlReader(settings, venue)
            consumer, tps, ends = await reader.open()
            caught_up = False
            applied: list[str] | None = None
            while True:
                changed = await reader.poll(consumer, tps)
                if not caught_up:
                    caught_up = await _at(consumer, tps, ends)
                if caught_up and (changed or applied is None):
                    symbols = effective_symbols(defaults, reader.of_venue(venue))
                    if applied is None or set(symbols) != set(applied):
                        log.info(
                            "subscriptions from the control topic", venue=venue, symbols=symbols
                        )
                        await apply(symbols)
                    applied = symbols
                    ready.set()
                delay = 0.5
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("control topic follower failed, retrying", error=repr(exc), in_s=delay)
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)
        finally:
            if consumer is not None:
                await stop_consumer(consumer)
