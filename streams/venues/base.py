"""What every venue collector shares (DESIGN §2, §3): connection, liveness, recovery, hand-off.

A venue subclass only says where to connect (`url`, `headers`), what to send once connected
(`subscribe_messages`), how to change symbols on an open connection (`resubscribe_messages`,
None = reconnect) and how to read one decoded frame (`parse`), plus its symbol spelling
(`to_venue` / `from_venue`). Everything that makes a feed trustworthy lives here once:

- websocket (aiohttp, with ping heartbeats) or HTTP chunked JSON lines (`transport`);
- a feed silent for `collector_stale_after_s` is treated as dead and reconnected;
- reconnects back off exponentially with jitter, capped at `collector_backoff_max_s`;
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
import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final, Literal

import aiohttp
import orjson
import structlog
from prometheus_client import Counter as PromCounter

from schemas.events import NS_PER_S, SYMBOL_RE, Kind
from streams.settings import Settings
from streams.sources.synthetic import EventSink

log = structlog.get_logger(__name__)

MALFORMED: Final = PromCounter(
    "sepstream_collector_malformed_frames",
    "Venue frames skipped as unreadable, by venue and reason",
    ["venue", "reason"],
)
RECONNECTS: Final = PromCounter(
    "sepstream_collector_reconnects", "Connections lost and re-established", ["venue", "cause"]
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
RESUBSCRIBES: Final = PromCounter(
    "sepstream_collector_resubscribes",
    "Symbol set changes applied to a connection, by how (live | reconnect)",
    ["venue", "how"],
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


@dataclass
class CollectorStats:
    """Per-instance counts (the Prometheus counters are process-wide)."""

    frames: int = 0
    events: int = 0
    replays: int = 0
    unsubscribed: int = 0  # in-flight events of removed symbols, dropped
    connects: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    gaps: Counter[str] = field(default_factory=Counter)


class Collector(abc.ABC):
    """Base of every venue collector; run with `await collector.run()`, end with `stop()`."""

    venue: ClassVar[str]
    transport: ClassVar[Literal["ws", "http_lines"]] = "ws"

    def __init__(self, settings: Settings, symbols: Sequence[str], sink: EventSink) -> None:
        self.settings = settings
        self.symbols = _checked(symbols)  # may be empty: the control topic can add some later
        self._active = set(self.symbols)
        self.sink = sink
        self.stats = CollectorStats()
        # venue spelling of what we ever subscribed: frames for anything else are malformed
        self._by_venue_symbol = {self.to_venue(s): s for s in self.symbols}
        self._last: dict[tuple[Kind, str, str | None], int] = {}
        self._armed: set[tuple[Kind, str, str | None]] = set()  # contiguity known this session
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # the symbol set changed, or stop()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._resp: aiohttp.ClientResponse | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # the symbols the open connection is subscribed to (None: no open connection)
        self._on_wire: frozenset[str] | None = None
        self._send_lock = asyncio.Lock()  # subscription requests never interleave
        self._restart = False  # the connection is being closed to reconnect with new symbols
        self.log = log.bind(venue=self.venue)

    # ---- what a venue provides ---------------------------------------------------------
    @abc.abstractmethod
    def url(self) -> str:
        """The endpoint for the subscribed symbols."""

    def headers(self) -> dict[str, str]:
        return {}

    def subscribe_messages(self) -> list[Any]:
        """JSON documents sent after connecting (none for URL-subscribed feeds)."""
        return []

    def resubscribe_messages(
        self, added: Sequence[str], removed: Sequence[str]
    ) -> list[Any] | None:
        """Requests that change an open connection's symbols; None: the venue cannot, reconnect."""
        return None

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
    def stop(self) -> None:
        """Ask the collector to finish: safe from a signal handler, returns at once."""
        self._stopping.set()
        self._wake.set()
        self._close_connection()

    def _close_connection(self) -> None:
        """Wake the pending receive by closing the connection (returns at once)."""
        if self._ws is not None and not self._ws.closed:
            task = asyncio.get_running_loop().create_task(self._ws.close())
            self._background.add(task)  # referenced, so the task is not collected early
            task.add_done_callback(self._background.discard)
        if self._resp is not None:
            self._resp.close()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def wait_stop(self) -> None:
        """Return once `stop()` was called."""
        await self._stopping.wait()

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

    async def _sync_subscriptions(self) -> None:
        """Bring the open connection's subscriptions to `self.symbols`."""
        async with self._send_lock:
            wire, ws = self._on_wire, self._ws
            want = frozenset(self.symbols)
            if wire is None or wire == want or self._restart:
                return
            added = [s for s in self.symbols if s not in wire]
            removed = sorted(wire - want)
            requests = self.resubscribe_messages(added, removed) if want else None
            if requests is not None and self.transport == "ws" and ws is not None:
                try:
                    for doc in requests:
                        await ws.send_str(orjson.dumps(doc).decode())  # JSON goes in text frames
                except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
                    self.log.warning("resubscribe failed, reconnecting", error=repr(exc))
                else:
                    self._on_wire = want
                    RESUBSCRIBES.labels(self.venue, "live").inc()
                    self.log.info(
                        "resubscribed on the open connection", added=added, removed=removed
                    )
                    return
            self._restart = True
            RESUBSCRIBES.labels(self.venue, "reconnect").inc()
            self.log.info("reconnecting for the new symbols", added=added, removed=removed)
            self._close_connection()

    async def run(self) -> None:
        """Connect, read, recover, until `stop()`; then flush what the sink still holds."""
        s = self.settings
        attempt = 0
        outage = False  # a gap was already emitted for the current outage
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.collector_connect_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while not self.stopping:
                    if not self.symbols:
                        await self._idle()
                        continue
                    cause = "closed"
                    connects = self.stats.connects
                    self._restart = False
                    try:
                        async with contextlib.aclosing(self._frames(session)) as frames:
                            async for raw in frames:
                                if attempt or outage:
                                    self.log.info("feed restored", attempts=attempt)
                                attempt, outage = 0, False
                                await self.handle_frame(raw)
                    except TimeoutError:
                        if self.stats.connects == connects:
                            cause = "connect_timeout"
                            self.log.warning("connect timed out", url=self.url())
                        else:
                            cause = "stale"
                            self.log.warning("feed stale", after_s=s.collector_stale_after_s)
                    except (aiohttp.ClientError, OSError) as exc:
                        if not self._restart:
                            cause = "error"
                            self.log.warning("connection failed", error=repr(exc))
                    wire, self._on_wire = self._on_wire, None
                    if self.stopping:
                        break
                    if self._restart:  # closed on purpose, for a new symbol set: no backoff
                        RECONNECTS.labels(self.venue, "resubscribe").inc()
                        now = time.time_ns()
                        for symbol in self.symbols:
                            if wire is not None and symbol in wire:
                                await self._gap(symbol, "resubscribe", now)
                        continue
                    RECONNECTS.labels(self.venue, cause).inc()
                    if not outage and self.stats.connects:
                        outage = True
                        await self._gap_all("reconnect")
                    delay = backoff_delay(
                        attempt, s.collector_backoff_initial_s, s.collector_backoff_max_s
                    )
                    attempt = min(attempt + 1, 30)
                    self.log.info("reconnecting", cause=cause, in_s=round(delay, 3))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            flush = getattr(self.sink, "flush", None)
            if flush is not None:
                await flush()
            self.log.info("collector stopped", **self._summary())

    async def _idle(self) -> None:
        """No symbol to collect: hold no connection until one is subscribed (or stop)."""
        self.log.info("no symbols to collect, waiting for a subscription")
        while not self.symbols and not self.stopping:
            self._wake.clear()
            await self._wake.wait()

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

    # ---- transport ---------------------------------------------------------------------
    def _frames(self, session: aiohttp.ClientSession) -> AsyncGenerator[bytes | str]:
        """Raw frames of one connection; ends when it closes, TimeoutError when stale."""
        return self._ws_frames(session) if self.transport == "ws" else self._line_frames(session)

    async def _connected(self, wire: frozenset[str]) -> None:
        self.stats.connects += 1
        self._armed.clear()  # ids may jump across an outage: that is the reconnect gap
        self.log.info("connected", symbols=sorted(wire), connects=self.stats.connects)

    async def _ws_frames(self, session: aiohttp.ClientSession) -> AsyncGenerator[bytes | str]:
        s = self.settings
        # what this connection subscribes to, fixed before the first await: a change that
        # arrives while connecting is applied once the connection is up
        wire, url, requests = frozenset(self.symbols), self.url(), self.subscribe_messages()
        async with asyncio.timeout(s.collector_connect_timeout_s):  # TCP, TLS and handshake
            ws = await self._unless_stopped(
                session.ws_connect(
                    url,
                    headers=self.headers(),
                    heartbeat=s.collector_heartbeat_s,
                    autoping=True,
                    # aiohttp drops the connection on a frame above this, so it is set well
                    # above our own limit: frames between the two are counted and skipped
                    max_msg_size=16 * s.collector_max_frame_bytes,
                )
            )
        if ws is None:
            return
        self._ws = ws
        try:
            if self.stopping:
                return
            await self._connected(wire)
            async with self._send_lock:
                for doc in requests:
                    await ws.send_str(orjson.dumps(doc).decode())  # JSON goes in text frames
                self._on_wire = wire
            await self._sync_subscriptions()
            while not self.stopping:
                # our own deadline: aiohttp's receive timeout restarts on every ping/pong, so
                # a connection that only answers pings would never look stale
                async with asyncio.timeout(s.collector_stale_after_s):
                    msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    yield msg.data
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    error = msg.data
                    if (
                        isinstance(error, aiohttp.WebSocketError)
                        and error.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                    ):
                        self._count_malformed("oversized", str(error))
                    else:
                        self.log.warning("connection error", error=repr(error))
                    return
                elif msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    return
        finally:
            self._ws = None
            await ws.close()

    async def _line_frames(self, session: aiohttp.ClientSession) -> AsyncGenerator[bytes | str]:
        s = self.settings
        limit = s.collector_max_frame_bytes
        wire, url = frozenset(self.symbols), self.url()
        async with asyncio.timeout(s.collector_connect_timeout_s):
            resp = await self._unless_stopped(session.get(url, headers=self.headers()))
        if resp is None:
            return
        self._resp = resp
        try:
            if self.stopping:
                return
            if resp.status != 200:
                async with asyncio.timeout(s.collector_connect_timeout_s):
                    body = (await resp.content.read(512)).decode(errors="replace")
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=body
                )
            await self._connected(wire)
            self._on_wire = wire
            await self._sync_subscriptions()
            pending = b""
            skipping = False  # inside an oversized line: drop bytes up to its newline
            while not self.stopping:
                chunk = await asyncio.wait_for(resp.content.readany(), s.collector_stale_after_s)
                if not chunk:
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if skipping:
                        skipping = False
                        continue
                    if line.strip():
                        yield line
                if len(pending) > limit:
                    if not skipping:
                        self._count_malformed("oversized", f"line > {limit} bytes")
                    skipping, pending = True, b""
        finally:
            self._resp = None
            resp.close()

    async def _unless_stopped[T](self, aw: Awaitable[T]) -> T | None:
        """`aw`'s result, or None when `stop()` comes first (a connect must not delay exit)."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # our own timeout or cancellation: take the attempt with us
            task.cancel()
            raise
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None

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


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Exponential, capped, with equal jitter so that many clients do not reconnect in step."""
    return float(min(max_s, initial_s * 2.0**attempt) * random.uniform(0.5, 1.0))


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
