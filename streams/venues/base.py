"""What every venue collector shares (docs/ARCHITECTURE.md#sources): frames to events,
liveness of the data, recovery marks, hand-off to the producer.

A venue subclass only says where to connect (`url`, `headers`), what to send once connected
(`subscribe_messages`), how to change symbols on an open connection (`resubscribe_messages`,
None = reconnect) and how to read one decoded frame (`parse`), plus its symbol spelling
(`to_venue` / `from_venue`). The connection itself — transports, the stale-feed timer,
reconnects with backoff, resubscription — is `streams.venues.connection`, the base of this
one. Everything else that makes a feed trustworthy lives here once:

- every outage and every detected sequence jump emits a `gap` event per affected symbol, so
  downstream flags the hole instead of computing silently wrong bars;
- replays (a venue re-sending recent trades/bars after a reconnect) are dropped: per stream
  the last id is remembered and anything at or below it never leaves twice;
- malformed frames (bad JSON, unknown shapes, oversized) are counted per venue and reason,
  logged, and skipped: the connection goes on;
- the symbol set changes at runtime (`set_symbols`, fed by the control topic): the open
  connection is resubscribed where the venue allows it, else reconnected with the new set
  (a `resubscribe` gap for the symbols that continue); a removed symbol gets an
  `unsubscribed` gap and its frames still in flight are dropped and counted; with no
  symbols at all the collector holds no connection and waits.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
from prometheus_client import Counter as PromCounter

from schemas.events import NS_PER_S, SYMBOL_RE, Kind
from streams.settings import Settings
from streams.sources.synthetic import EventSink
from streams.venues.connection import VenueConnection

MALFORMED: Final = PromCounter(
    "sepstream_collector_malformed_frames",
    "Venue frames skipped as unreadable, by venue and reason",
    ["venue", "reason"],
)
GAPS: Final = PromCounter(
    "sepstream_collector_gaps", "Gap markers emitted, by venue and reason", ["venue", "reason"]
)
EVENTS: Final = PromCounter(
    "sepstream_collector_events", "Events handed to the producer", ["venue", "kind"]
)
REPLAYS: Final = PromCounter(
    "sepstream_collector_replays_dropped", "Events dropped as already emitted", ["venue"]
)
UNSUBSCRIBED: Final = PromCounter(
    "sepstream_collector_unsubscribed_dropped",
    "Events of a symbol just unsubscribed, still in flight from the venue, dropped",
    ["venue"],
)


class MalformedFrameError(ValueError):
    """A frame the parser cannot accept; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    """One normalized event from a parser, before replay suppression.

    `order` is the venue's monotonically increasing id for this stream (trade id, update
    id, bar open time, event time): an event whose order is not above the last emitted one
    of its stream is a replay. With `contiguous`, the ids are consecutive, so a jump while
    connected is a sequence gap.
    """

    kind: Kind
    symbol: str
    columns: dict[str, Any]
    order: int | None = None
    contiguous: bool = False
    timeframe: str | None = None

    @property
    def stream(self) -> tuple[Kind, str, str | None]:
        return (self.kind, self.symbol, self.timeframe)


class Collector(VenueConnection):
    """Base of every venue collector; run with `await collector.run()`, end with `stop()`."""

    def __init__(self, settings: Settings, symbols: Sequence[str], sink: EventSink) -> None:
        super().__init__(settings)
        self.symbols = _checked(symbols)  # may be empty: the control topic can add some later
        self._active = set(self.symbols)
        self.sink = sink
        # venue spelling of what we ever subscribed: frames for anything else are malformed
        self._by_venue_symbol = {self.to_venue(s): s for s in self.symbols}
        self._last: dict[tuple[Kind, str, str | None], int] = {}
        self._armed: set[tuple[Kind, str, str | None]] = set()  # contiguity known this session

    # ---- what a venue provides ---------------------------------------------------------
    # url(), headers(), subscribe_messages(), resubscribe_messages(): see VenueConnection

    def symbols_removed(self, removed: Sequence[str]) -> None:
        """Forget per-symbol session state (venues extend it: forming candles).

        Contiguity is disarmed, so the id jump of a later re-subscription is not reported as
        a sequence gap (the `unsubscribed` gap already marks the hole); the last ids stay, so
        a snapshot re-sent on re-subscribing is still recognised as replay.
        """
        gone = set(removed)
        self._armed = {key for key in self._armed if key[1] not in gone}

    @abc.abstractmethod
    def parse(self, msg: Any, ts_recv: int) -> list[Event]:
        """Events of one decoded frame; [] for control frames; else `MalformedFrameError`."""

    @staticmethod
    @abc.abstractmethod
    def to_venue(symbol: str) -> str:
        """`BTC-USDT` → the venue's spelling."""

    @staticmethod
    @abc.abstractmethod
    def from_venue(venue_symbol: str) -> str:
        """The venue's spelling → `BTC-USDT`."""

    def symbol_of(self, venue_symbol: Any) -> str:
        """Our symbol for a venue symbol we subscribed to (else the frame is malformed)."""
        symbol = self._by_venue_symbol.get(venue_symbol) if isinstance(venue_symbol, str) else None
        if symbol is None:
            raise MalformedFrameError("unknown_symbol", repr(venue_symbol))
        return symbol

    # ---- lifecycle ---------------------------------------------------------------------
    async def set_symbols(self, symbols: Sequence[str]) -> None:
        """Collect exactly `symbols` from now on, without a restart of the process.

        Removed symbols get an `unsubscribed` gap (their forming bar is cut short) and their
        events still in flight are dropped; the open connection is changed with the venue's
        (un)subscribe requests, or reconnected where the venue takes symbols in the URL.
        """
        wanted = _checked(symbols)
        if set(wanted) == set(self.symbols):
            return
        keep = set(wanted)
        old = set(self.symbols)
        added = [s for s in wanted if s not in old]
        removed = [s for s in self.symbols if s not in keep]
        self.symbols, self._active = wanted, keep
        for symbol in added:
            self._by_venue_symbol[self.to_venue(symbol)] = symbol
        self._wake.set()
        self.log.info("symbols changed", added=added, removed=removed, symbols=wanted)
        if removed:
            self.symbols_removed(removed)
            wire = self._on_wire or frozenset()
            now = time.time_ns()
            for symbol in removed:
                if symbol in wire:
                    await self._gap(symbol, "unsubscribed", now)
        await self._sync_subscriptions()

    async def run(self) -> None:
        """Connect, read, recover, until `stop()`; then flush what the sink still holds."""
        try:
            await self._stay_connected()
        finally:
            flush = getattr(self.sink, "flush", None)
            if flush is not None:
                await flush()
            self.log.info("collector stopped", **self._summary())

    def _summary(self) -> dict[str, Any]:
        st = self.stats
        return {
            "frames": st.frames,
            "events": st.events,
            "replays_dropped": st.replays,
            "unsubscribed_dropped": st.unsubscribed,
            "connects": st.connects,
            "malformed": dict(st.malformed),
            "gaps": dict(st.gaps),
        }

    async def _connected(self, wire: frozenset[str]) -> None:
        await super()._connected(wire)
        self._armed.clear()  # ids may jump across an outage: that is the reconnect gap

    # ---- frames to events --------------------------------------------------------------
    def _count_malformed(self, reason: str, detail: str) -> None:
        self.stats.malformed[reason] += 1
        MALFORMED.labels(self.venue, reason).inc()
        self.log.warning("malformed frame skipped", reason=reason, detail=detail[:200])

    async def handle_frame(self, raw: bytes | str) -> None:
        """One raw frame through decoding, parsing, replay suppression and into the sink.

        The whole per-frame production path (`bench/collectors.py` times exactly this).
        """
        ts_recv = time.time_ns()
        self.stats.frames += 1
        limit = self.settings.collector_max_frame_bytes
        size = len(raw)
        if isinstance(raw, str) and 4 * size > limit:
            size = len(raw.encode())  # a text frame's bytes, counted only when it matters
        if size > limit:
            self._count_malformed("oversized", f"{size} > {limit} bytes")
            return
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._count_malformed("bad_json", str(exc))
            return
        try:
            events = self.parse(msg, ts_recv)
        except MalformedFrameError as exc:
            self._count_malformed(exc.reason, f"{exc.detail} in {str(raw)[:120]}")
            return
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # a parser is strict; whatever shape slips past its checks is still just malformed
            self._count_malformed("unknown_shape", f"{exc!r} in {str(raw)[:120]}")
            return
        for event in events:
            await self._emit(event)

    async def _emit(self, event: Event) -> None:
        if event.symbol not in self._active:  # unsubscribed, the venue had it in flight
            self.stats.unsubscribed += 1
            UNSUBSCRIBED.labels(self.venue).inc()
            return
        key = event.stream
        if event.order is not None:
            last = self._last.get(key)
            if last is not None and event.order <= last:
                self.stats.replays += 1
                REPLAYS.labels(self.venue).inc()
                return
            if (
                event.contiguous
                and last is not None
                and key in self._armed
                and event.order > last + 1
            ):
                await self._gap(
                    event.symbol,
                    "sequence_gap",
                    event.columns["ts_event"],
                    missing=event.order - last - 1,
                )
            self._last[key] = event.order
            if event.contiguous:
                self._armed.add(key)
        await self.sink.add(
            event.kind, self.venue, event.symbol, event.columns, timeframe=event.timeframe
        )
        self.stats.events += 1
        EVENTS.labels(self.venue, event.kind.value).inc()

    async def _gap(self, symbol: str, reason: str, ts_event: int, **detail: Any) -> None:
        now = time.time_ns()
        await self.sink.add(
            Kind.GAP, self.venue, symbol, {"ts_event": ts_event, "ts_recv": now}, reason=reason
        )
        self.stats.gaps[reason] += 1
        GAPS.labels(self.venue, reason).inc()
        self.log.warning("gap", symbol=symbol, reason=reason, **detail)

    async def _gap_all(self, reason: str) -> None:
        now = time.time_ns()
        for symbol in self.symbols:
            await self._gap(symbol, reason, now)


def _checked(symbols: Sequence[str]) -> list[str]:
    """Distinct `BASE-QUOTE` symbols in their order; ValueError on anything else."""
    for symbol in symbols:
        if not SYMBOL_RE.match(symbol):
            raise ValueError(f"{symbol!r} is not a BASE-QUOTE symbol")
    return list(dict.fromkeys(symbols))


# ---- parsing helpers shared by the venues ---------------------------------------------
def number(doc: Any, name: str) -> float:
    """A decimal field sent as a JSON string or number (venues do both)."""
    value = doc.get(name) if isinstance(doc, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MalformedFrameError("bad_field", f"{name}={value!r}")
    try:
        return float(value)
    except ValueError:
        raise MalformedFrameError("bad_field", f"{name}={value!r}") from None


def integer(doc: Any, name: str) -> int:
    value = doc.get(name) if isinstance(doc, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedFrameError("bad_field", f"{name}={value!r}")
    return value


def text(doc: Any, name: str) -> str:
    value = doc.get(name) if isinstance(doc, dict) else None
    if not isinstance(value, str):
        raise MalformedFrameError("bad_field", f"{name}={value!r}")
    return value


def ms_to_ns(ms: int) -> int:
    return ms * 1_000_000


def rfc3339_ns(stamp: str) -> int:
    """`2023-09-25T07:49:37.708706123Z` → ns since the epoch, without float rounding."""
    if not isinstance(stamp, str) or "T" not in stamp:
        raise MalformedFrameError("bad_field", f"time={stamp!r}")
    body, frac = stamp, ""
    if "." in stamp:
        body, rest = stamp.split(".", 1)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        frac, offset = rest[:digits], rest[digits:]
        body += offset
    if body.endswith("Z"):
        body = body[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(body)
    except ValueError:
        raise MalformedFrameError("bad_field", f"time={stamp!r}") from None
    if dt.tzinfo is None or len(frac) > 9:
        raise MalformedFrameError("bad_field", f"time={stamp!r}")
    return int(dt.timestamp()) * NS_PER_S + int(frac.ljust(9, "0") or 0)


def split_concatenated(venue_symbol: str, quotes: Sequence[str]) -> str:
    """`BTCUSDT` → `BTC-USDT` by the longest known quote currency at the end."""
    upper = venue_symbol.upper()
    for quote in sorted(quotes, key=len, reverse=True):
        if upper.endswith(quote) and len(upper) > len(quote):
            return f"{upper[: -len(quote)]}-{quote}"
    raise MalformedFrameError("unknown_symbol", venue_symbol)
