"""Adaptive micro-batching producer shared by every source (docs/ARCHITECTURE.md#why-micro-batches).

Events are buffered per instrument and leave as one `MarketEventBatch` record when
`batch_max_events` are buffered or `batch_linger_ms` has passed since the first of them:
at low rates a record holds one event and adds no latency; under load, records fill up
and Faust's per-record cost is paid once per batch.

Delivery is at-least-once: a record whose send fails with a retriable error (the broker paused or
away longer than the client's own retries last, a request timed out) is sent again with capped
backoff until it is acknowledged, and `flush()`/`stop()` wait for that. A resend may duplicate a
record the broker did store; trade ids and the sinks' natural keys absorb that (no idempotent
producer on every broker: docs/ARCHITECTURE.md#broker-caveats). Only non-retriable errors (a record
too large, the producer closed) give up, counted in `send_errors`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from schemas.batch import MarketEventBatch
from schemas.events import Kind, instrument_key
from streams.kafka.clients import kafka_client_kwargs, start_client
from streams.settings import Settings

log = structlog.get_logger(__name__)
_RESEND_MAX_S = 5.0  # cap of the backoff between sends of one undelivered record


@dataclass
class _Buffer:
    kind: Kind
    venue: str
    symbol: str
    timeframe: str | None
    reason: str | None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0
    since: float = 0.0  # monotonic time of the first buffered event


class BatchingProducer:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.max_events = settings.batch_max_events
        self.linger_s = settings.batch_linger_ms / 1000
        self._buffers: dict[tuple[Kind, str, str | None, str | None], _Buffer] = {}
        self._producer: AIOKafkaProducer | None = None
        self._lingerer: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self.events_sent = 0
        self.records_sent = 0
        self.send_retries = 0  # sends repeated after a retriable failure
        self.send_errors = 0  # records given up (non-retriable errors only)

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            linger_ms=5,
            max_batch_size=1_048_576,
            max_request_size=4_194_304,
            acks="all",
            enable_idempotence=False,  # not offered by every broker; sinks are idempotent
            **kafka_client_kwargs(self.settings),
        )
        await start_client(producer)
        self._producer = producer
        self._lingerer = asyncio.create_task(self._linger_loop(), name="producer-linger")

    async def stop(self) -> None:
        """Flush everything buffered, wait for delivery, close."""
        if self._lingerer is not None:
            self._lingerer.cancel()
            self._lingerer = None
        await self.flush()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> BatchingProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def add(
        self,
        kind: Kind,
        venue: str,
        symbol: str,
        columns: dict[str, Any],
        *,
        timeframe: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Buffer events given as columns (arrays, or scalars for a single event)."""
        cols = {k: np.atleast_1d(v) for k, v in columns.items()}
        n = len(cols["ts_event"])
        if n == 0:
            return
        bkey = (kind, instrument_key(venue, symbol), timeframe, reason)
        buf = self._buffers.get(bkey)
        if buf is None:
            buf = self._buffers[bkey] = _Buffer(kind, venue, symbol, timeframe, reason)
        if buf.count == 0:
            buf.since = time.monotonic()
        buf.chunks.append(cols)
        buf.count += n
        if buf.count >= self.max_events:
            await self._emit(buf, full_only=True)

    async def flush(self) -> None:
        for buf in list(self._buffers.values()):
            await self._emit(buf, full_only=False)
        # resends add new futures while we wait: loop until none is left
        while True:
            if self._producer is not None:
                await self._producer.flush()
            if not self._pending:
                return
            await asyncio.wait(list(self._pending))  # unlike gather, a cancelled flush leaves them

    async def _linger_loop(self) -> None:
        while True:
            await asyncio.sleep(self.linger_s / 2 or 0.001)
            now = time.monotonic()
            for buf in list(self._buffers.values()):
                if buf.count and now - buf.since >= self.linger_s:
                    await self._emit(buf, full_only=False)

    async def _emit(self, buf: _Buffer, *, full_only: bool) -> None:
        # Take the events out of the buffer before the first await: the linger task may
        # run while we send, and must find only what is still unsent.
        if buf.count == 0:
            return
        chunks = buf.chunks
        merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        n = buf.count
        cut = (n // self.max_events) * self.max_events if full_only else n
        buf.chunks = [{k: v[cut:] for k, v in merged.items()}] if cut < n else []
        buf.count = n - cut
        buf.since = time.monotonic()
        for start in range(0, cut, self.max_events):
            part = {k: v[start : start + self.max_events] for k, v in merged.items()}
            batch = MarketEventBatch.from_columns(
                buf.kind, buf.venue, buf.symbol, part, timeframe=buf.timeframe, reason=buf.reason
            )
            await self.send(batch.key.encode(), batch.encode(collector_out=time.time_ns()))
            self.events_sent += len(batch)

    async def send(self, key: bytes | None, value: bytes) -> None:
        """Send one raw record (also used to inject arbitrary bytes, or no key, in tests)."""
        await self._send(key, value, attempt=0)
        self.records_sent += 1

    async def _send(self, key: bytes | None, value: bytes, *, attempt: int) -> None:
        assert self._producer is not None, "start() first"
        while True:
            try:
                fut = await self._producer.send(self.topic, value=value, key=key)
                break
            except KafkaError as exc:
                # no room in the client's buffer for request_timeout_ms: the broker is away
                if not _retriable(exc):
                    raise
                attempt += 1
                self.send_retries += 1
                log.warning("send blocked, retrying", topic=self.topic, error=repr(exc))
                await asyncio.sleep(_backoff(attempt))
        self._pending.add(fut)
        fut.add_done_callback(functools.partial(self._delivered, key, value, attempt))

    def _delivered(
        self, key: bytes | None, value: bytes, attempt: int, fut: asyncio.Future[Any]
    ) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            self.send_errors += 1
            log.error("record not delivered (cancelled)", topic=self.topic)
            return
        exc = fut.exception()
        if exc is None:
            return
        if not _retriable(exc) or self._producer is None:
            self.send_errors += 1
            log.error("record not delivered", topic=self.topic, error=repr(exc))
            return
        self.send_retries += 1
        log.warning("record not acknowledged, resending", topic=self.topic, error=repr(exc))
        task = asyncio.ensure_future(self._resend(key, value, attempt + 1))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _resend(self, key: bytes | None, value: bytes, attempt: int) -> None:
        await asyncio.sleep(_backoff(attempt))
        if self._producer is None:
            self.send_errors += 1
            log.error("record not delivered: producer stopped", topic=self.topic)
            return
        try:
            await self._send(key, value, attempt=attempt)
        except KafkaError as exc:
            self.send_errors += 1
            log.error("record not delivered", topic=self.topic, error=repr(exc))


def _retriable(exc: BaseException) -> bool:
    """KafkaTimeoutError (an expired batch, a full buffer) is not flagged retriable by aiokafka
    but only says the broker did not answer in time: worth another try."""
    return isinstance(exc, KafkaTimeoutError) or bool(getattr(exc, "retriable", False))


def _backoff(attempt: int) -> float:
    return float(min(_RESEND_MAX_S, 0.1 * 2 ** min(attempt, 10)))
