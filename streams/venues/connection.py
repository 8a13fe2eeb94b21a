"""The connection handling of a venue collector (docs/ARCHITECTURE.md#sources), apart from
what the collector does with the frames (`streams.venues.base.Collector`):

- websocket (aiohttp, with ping heartbeats) or HTTP chunked JSON lines (`transport`);
- a feed silent for `collector_stale_after_s` is treated as dead and reconnected;
- reconnects back off exponentially with jitter, capped at `collector_backoff_max_s`; the
  first failure of an outage asks the collector for a `reconnect` gap on every symbol;
- the symbols of the open connection follow the collector's (`_sync_subscriptions`): with
  the venue's (un)subscribe requests where it has them, else by reconnecting at once (no
  backoff; a `resubscribe` gap for the symbols that continue); with no symbols at all no
  connection is held;
- `stop()` closes the connection from anywhere (a signal handler too), and a connect in
  progress never delays it.

Frames go to the collector's `handle_frame`; the collector answers the hooks declared
abstract here (frames, gaps, malformed counts).
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
from typing import Any, ClassVar, Final, Literal

import aiohttp
import orjson
import structlog
from prometheus_client import Counter as PromCounter

from streams.settings import Settings

log = structlog.get_logger(__name__)

RECONNECTS: Final = PromCounter(
    "sepstream_collector_reconnects", "Connections lost and re-established", ["venue", "cause"]
)
RESUBSCRIBES: Final = PromCounter(
    "sepstream_collector_resubscribes",
    "Symbol set changes applied to a connection, by how (live | reconnect)",
    ["venue", "how"],
)


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


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Exponential, capped, with equal jitter so that many clients do not reconnect in step."""
    return float(min(max_s, initial_s * 2.0**attempt) * random.uniform(0.5, 1.0))


class VenueConnection(abc.ABC):
    """One connection to a venue at a time, kept up until `stop()`."""

    venue: ClassVar[str]
    transport: ClassVar[Literal["ws", "http_lines"]] = "ws"
    symbols: list[str]  # what the collector wants now (set by it)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = CollectorStats()
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

    # ---- where to connect (the venue's) -------------------------------------------------
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

    # ---- what the collector does with it ------------------------------------------------
    @abc.abstractmethod
    async def handle_frame(self, raw: bytes | str) -> None:
        """One raw frame, as it arrived."""

    @abc.abstractmethod
    def _count_malformed(self, reason: str, detail: str) -> None:
        """A frame skipped as unreadable (here: too big)."""

    @abc.abstractmethod
    async def _gap(self, symbol: str, reason: str, ts_event: int, **detail: Any) -> None:
        """Mark a hole in `symbol`'s data at `ts_event`."""

    @abc.abstractmethod
    async def _gap_all(self, reason: str) -> None:
        """Mark a hole now in the data of every symbol."""

    async def _connected(self, wire: frozenset[str]) -> None:
        """A connection is up, subscribed to `wire`."""
        self.stats.connects += 1
        self.log.info("connected", symbols=sorted(wire), connects=self.stats.connects)

    # ---- lifecycle ----------------------------------------------------------------------
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

    async def _stay_connected(self) -> None:
        """Connect, read, recover, until `stop()`: the collector's `run`."""
        s = self.settings
        attempt = 0
        outage = False  # a gap was already emitted for the current outage
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.collector_connect_timeout_s)
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

    async def _idle(self) -> None:
        """No symbol to collect: hold no connection until one is subscribed (or stop)."""
        self.log.info("no symbols to collect, waiting for a subscription")
        while not self.symbols and not self.stopping:
            self._wake.clear()
            await self._wake.wait()

    # ---- transport ---------------------------------------------------------------------
    def _frames(self, session: aiohttp.ClientSession) -> AsyncGenerator[bytes | str]:
        """Raw frames of one connection; ends when it closes, TimeoutError when stale."""
        return self._ws_frames(session) if self.transport == "ws" else self._line_frames(session)

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
