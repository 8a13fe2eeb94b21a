"""What a replay is: the range of event times, the namespace it goes to, and the checks
that it can never write under the live names (docs/ARCHITECTURE.md#replay).

Warm-up and lead-out. The events of `warmup` before `from` are replayed too, so that
windowed outputs (damping windows, SMAs, Bollinger bands) at the start of the range see the
same bars as live; the default is one damping window of 1m bars. The events of the bar
grace after `to` are replayed so that the last bars of the range close by event time, as
they did live (bars starting at or after `to` are partial and never verified).

Record timestamps find the range in the topic (`offsets`); event times decide what of it is
replayed: each record is decoded and only its events with ``from − warmup ≤ ts_event <
to + lead-out`` are republished (`cut_to_range`: a record wholly inside keeps its original
bytes, an edge record is cut).
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Final

import numpy as np

from schemas.batch import CodecError, MarketEventBatch, decode_batch
from schemas.ddl import check_ident
from schemas.events import NS_PER_S
from streams.model.library import parse_since
from streams.settings import Settings
from streams.topics import hot_topics

MS: Final = 1_000_000  # ns per ms


class IsolationError(RuntimeError):
    """The replay target would share a topic, schema, key prefix or group with the source."""


@dataclass(frozen=True)
class ReplayRange:
    """What to replay, in event time (ns since the epoch, UTC)."""

    start_ns: int  # --from
    end_ns: int  # --to (exclusive)
    warmup_ns: int = 0  # events this long before --from are replayed too
    leadout_ns: int = 0  # events this long after --to are replayed too (bars close on time)
    symbols: frozenset[str] = frozenset()  # empty: every symbol

    def __post_init__(self) -> None:
        if self.end_ns <= self.start_ns:
            raise ValueError("--to must be after --from")
        if self.warmup_ns < 0 or self.leadout_ns < 0:
            raise ValueError("warm-up and lead-out must not be negative")

    @property
    def data_start_ns(self) -> int:
        """The first event time replayed."""
        return self.start_ns - self.warmup_ns

    @property
    def data_end_ns(self) -> int:
        """The first event time not replayed."""
        return self.end_ns + self.leadout_ns

    def wants(self, symbol: str, venue: str) -> bool:
        return not self.symbols or symbol in self.symbols or f"{venue}:{symbol}" in self.symbols


def parse_time(text: str) -> int:
    """ISO-8601 (UTC unless an offset is given) or 7d / 12h / 30m ago → ns since the epoch."""
    moment = parse_since(text)
    return int(moment.timestamp()) * NS_PER_S + moment.microsecond * 1000


def parse_duration(text: str) -> int:
    """`90m`, `2h`, `45s`, `0` → ns."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text == "0":
        return 0
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"not a duration like 90m, 2h or 45s: {text!r}")
    return int(text[:-1]) * units[text[-1]] * NS_PER_S


def parse_speed(text: str) -> float | None:
    """`max` → None (as fast as possible); `N` → N× real time (N > 0)."""
    if text.strip().lower() == "max":
        return None
    speed = float(text)
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be 'max' or a number > 0, got {text!r}")
    return speed


def default_warmup_ns(settings: Settings) -> int:
    """One damping window of 1m bars: enough for every 1m signal, SMA and band in the range."""
    return settings.damping_window * 60 * NS_PER_S


def default_leadout_ns(settings: Settings) -> int:
    """The bar grace plus a minute: an instrument trading then closes its last bars on time."""
    return settings.bar_grace_ms * MS + 60 * NS_PER_S


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def target_settings(source: Settings, namespace: str) -> Settings:
    """The settings of the replay's worker: `source` moved into `namespace`.

    Validation keeps its rules except the age limit (a backtest replays old data), and the
    worker's web server gets a free port so it never collides with a live worker's.
    """
    check_ident(namespace)
    target = source.replace(
        namespace=namespace,
        max_age_s=0,
        web_port=_free_port(source.web_host),
    )
    assert_isolated(source, target)
    return target


def assert_isolated(source: Settings, target: Settings) -> None:
    """A backtest never writes into live tables, keys, topics or offsets: refuse if it could."""
    problems = []
    if not target.namespace:
        problems.append("the replay namespace is empty (that is the live namespace)")
    if target.pg_schema in {source.pg_schema, "public"}:
        problems.append(f"PostgreSQL schema {target.pg_schema!r} is the source's or public")
    if target.redis_prefix == source.redis_prefix:
        problems.append(f"Redis prefix {target.redis_prefix!r} is the source's")
    if target.group_id == source.group_id:
        problems.append(f"consumer group {target.group_id!r} is the source's")
    shared = set(hot_topics(source).values()) & set(hot_topics(target).values())
    if shared:
        problems.append(f"topics {sorted(shared)} are the source's")
    if problems:
        raise IsolationError("; ".join(problems))


def symbols_from_cli(text: str | None) -> frozenset[str]:
    """`BTC-USDT,sim_kraken:XRP-EUR` → the set (symbol, or venue:symbol)."""
    if not text:
        return frozenset()
    return frozenset(s.strip() for s in text.split(",") if s.strip())


def cut_to_range(
    value: bytes, rng: ReplayRange
) -> tuple[bytes | None, MarketEventBatch | None, int]:
    """The record to republish (None: nothing of it is wanted), its batch, its event count.

    Undecodable records are republished as they are when their timestamp is in the range
    (the namespace's validate dead-letters them exactly as live did); the caller decides.
    """
    try:
        batch = decode_batch(value)
    except CodecError:
        return value, None, 1
    if not rng.wants(batch.symbol, batch.venue):
        return None, batch, 0
    ts = batch.cols["ts_event"]
    inside = (ts >= rng.data_start_ns) & (ts < rng.data_end_ns)
    kept = int(inside.sum())
    if kept == 0:
        return None, batch, 0
    if kept == len(batch) or batch.bad_type is not None:
        return value, batch, len(batch)  # whole (bad-typed events are not re-encodable)
    part = batch.select(np.flatnonzero(inside))
    return part.encode(), part, kept
