"""validate: md.trades.v1 → md.events.v1 (valid events) and md.dlq.v1 (each bad one, with why).

Checks are vectorised per record; the first failing rule names an event's reason. A record
that cannot be decoded is dead-lettered whole with its original bytes. Nothing here may
raise out of the loop: a poison record must never stop the worker.
"""

from __future__ import annotations

import time
from typing import Any, Final

import faust
import numpy as np
import numpy.typing as npt
import structlog

from kernels.dedup import SeenIds
from schemas.batch import CodecError, MarketEventBatch, decode_batch
from schemas.deadletter import dead_letter
from schemas.events import NS_PER_S, SYMBOL_RE, TIMEFRAMES, VENUE_RE, Kind
from streams.app import Topics
from streams.metrics import BATCH_EVENTS, DEAD_LETTERS, EVENTS_IN, EVENTS_OUT
from streams.settings import Settings

log = structlog.get_logger(__name__)
STAGE: Final = "validate"
SOURCE_HEADER: Final = "src"  # "<partition>:<offset>" of the md.trades.v1 record forwarded
_ORIGINAL_MAX: Final = 65_536  # bytes of an oversized record kept in its dead letter


class Validator:
    """The validation rules; pure apart from the duplicate-id memory it keeps."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.venues = frozenset(settings.venues)
        self.symbols = frozenset(settings.symbols)
        self._seen: dict[str, SeenIds] = {}  # per instrument, fixed size
        self._anonymous = 0  # sources for callers that give none: each call its own record

    def record_reason(self, batch: MarketEventBatch) -> tuple[str, str] | None:
        """A reason shared by every event of the record (bad instrument or timeframe)."""
        if not VENUE_RE.match(batch.venue) or batch.venue not in self.venues:
            return "unknown_venue", batch.venue
        if not SYMBOL_RE.match(batch.symbol):
            return "bad_symbol", batch.symbol
        if self.symbols and batch.symbol not in self.symbols:
            return "unknown_symbol", batch.symbol
        if batch.kind is Kind.BAR and batch.timeframe not in TIMEFRAMES:
            return "unknown_timeframe", str(batch.timeframe)
        return None

    def event_reasons(
        self, batch: MarketEventBatch, now_ns: int, source: int | None = None
    ) -> list[str | None]:
        """Per event: None when valid, else the reason code of the first rule it fails.

        `source` identifies the input record (`source_id`): the same record read again gets
        the same answers, its own trade ids are not duplicates of themselves.
        """
        c = batch.cols
        ts = c["ts_event"]
        rules: list[tuple[str, npt.NDArray[np.bool_]]] = []
        if batch.bad_type is not None:
            rules.append(("wrong_type", batch.bad_type))
        rules.append(("bad_timestamp", (ts <= 0) | (c["ts_recv"] <= 0)))
        # before any market data we take: seconds, ms or µs written where ns belong
        rules.append(("implausible_timestamp", ts < self.settings.min_event_time_s * NS_PER_S))
        rules.append(
            ("future_timestamp", ts > now_ns + self.settings.max_future_skew_ms * 1_000_000)
        )
        if self.settings.max_age_s > 0:
            rules.append(("stale_timestamp", ts < now_ns - self.settings.max_age_s * NS_PER_S))
        match batch.kind:
            case Kind.TRADE:
                p, s = c["price"], c["size"]
                rules += [
                    ("non_finite_price", ~np.isfinite(p)),
                    ("non_positive_price", p <= 0),
                    ("non_finite_size", ~np.isfinite(s)),
                    ("negative_size", s < 0),
                    ("bad_side", (c["side"] < -1) | (c["side"] > 1)),
                    ("missing_trade_id", c["trade_id"] < 0),
                ]
            case Kind.QUOTE:
                bp, bs, ap, as_ = c["bid_price"], c["bid_size"], c["ask_price"], c["ask_size"]
                finite = np.isfinite(bp) & np.isfinite(ap) & np.isfinite(bs) & np.isfinite(as_)
                rules += [
                    ("non_finite_price", ~finite),
                    ("non_positive_price", (bp <= 0) | (ap <= 0)),
                    ("negative_size", (bs < 0) | (as_ < 0)),
                    ("crossed_quote", bp > ap),
                ]
            case Kind.BAR:
                o, h, lo, cl, v = c["open"], c["high"], c["low"], c["close"], c["volume"]
                finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(cl)
                rules += [
                    ("non_finite_price", ~finite),
                    ("non_positive_price", (o <= 0) | (h <= 0) | (lo <= 0) | (cl <= 0)),
                    ("bad_bar", (lo > np.minimum(o, cl)) | (h < np.maximum(o, cl))),
                    ("non_finite_size", ~np.isfinite(v)),
                    ("negative_size", v < 0),
                ]
            case Kind.GAP:
                pass
        reasons: list[str | None] = [None] * len(batch)
        for reason, failed in rules:
            for i in np.flatnonzero(failed).tolist():
                if reasons[i] is None:
                    reasons[i] = reason
        if batch.kind is Kind.TRADE:
            if source is None:
                self._anonymous -= 1
                source = self._anonymous
            self._duplicates(batch, reasons, source)
        return reasons

    def _duplicates(self, batch: MarketEventBatch, reasons: list[str | None], source: int) -> None:
        """Flag repeated trade ids among the events no earlier rule rejected (kernels.dedup);
        rejected events are neither checked nor remembered."""
        seen = self._seen.get(batch.key)
        if seen is None:
            seen = self._seen[batch.key] = SeenIds(self.settings.dedup_window)
        at = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.intp)
        for i in at[seen.check(batch.cols["trade_id"][at], source)].tolist():
            reasons[i] = "duplicate_trade_id"


def source_id(partition: int, offset: int) -> int:
    """One int for an input record's position (compact to keep per trade id)."""
    return (partition << 48) | offset


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    validator = Validator(settings)

    async def to_dlq(
        key: bytes | None, source: tuple[str, int, int], reason: str, **kw: Any
    ) -> None:
        DEAD_LETTERS.labels(STAGE, reason).inc()
        await topics.dlq.send(
            key=key, value=dead_letter(stage=STAGE, reason=reason, source=source, key=key, **kw)
        )

    @app.agent(topics.trades, name="validate")
    async def validate(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            msg = event.message
            data: bytes = event.value
            key: bytes | None = event.key
            source = (msg.topic, msg.partition, msg.offset)
            if len(data) > settings.max_record_bytes:
                EVENTS_IN.labels(STAGE).inc()
                await to_dlq(
                    key,
                    source,
                    "oversized",
                    detail=f"{len(data)} bytes > {settings.max_record_bytes}",
                    original=data[:_ORIGINAL_MAX],
                )
                continue
            try:
                batch = decode_batch(data)
            except CodecError as exc:
                EVENTS_IN.labels(STAGE).inc()
                await to_dlq(key, source, exc.reason, detail=exc.detail, original=data)
                continue
            n = len(batch)
            EVENTS_IN.labels(STAGE).inc(n)
            BATCH_EVENTS.observe(n)
            try:
                shared = validator.record_reason(batch)
                reasons = (
                    [shared[0]] * n
                    if shared
                    else validator.event_reasons(
                        batch, time.time_ns(), source_id(msg.partition, msg.offset)
                    )
                )
            except Exception as exc:  # a rule bug must not stop the stream
                log.exception("validation failed", key=key, error=repr(exc))
                reasons = ["validation_error"] * n
            bad = [i for i, r in enumerate(reasons) if r is not None]
            for i in bad:
                detail = shared[1] if shared else ""
                await to_dlq(key, source, str(reasons[i]), detail=detail, event=batch.raw_event(i))
            if len(bad) == n:
                continue
            out_key = batch.key.encode()
            src = f"{msg.partition}:{msg.offset}".encode()
            if bad:
                ok = np.ones(n, dtype=bool)
                ok[bad] = False
                value = batch.select(ok).encode(validate_out=time.time_ns())
            else:
                value = data  # all valid: forward the bytes as they are, no re-encoding
            # The source position lets downstream state skip a re-forwarded record.
            await topics.events.send(key=out_key, value=value, headers={SOURCE_HEADER: src})
            EVENTS_OUT.labels(STAGE).inc(n - len(bad))
