"""validate: md.trades.v1 → md.events.v1 (valid events) and md.dlq.v1 (each bad one, with why).

Checks are vectorised per record; the first failing rule names an event's reason. A record
that cannot be decoded is dead-lettered whole with its original bytes. Anything else a
record makes this stage raise is dead-lettered by the shared runner (agents.stage).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import faust
import numpy as np
import structlog

from agents.stage import Output, Stage
from kernels.validation import ValidationRules, Validator, source_id
from schemas.batch import CodecError, decode_batch
from schemas.deadletter import dead_letter
from streams.ops.metrics import BATCH_EVENTS, DEAD_LETTERS, EVENTS_IN, EVENTS_OUT
from streams.settings import Settings
from streams.topics import Topics

log = structlog.get_logger(__name__)
STAGE: Final = "validate"
SOURCE_HEADER: Final = "src"  # "<partition>:<offset>" of the md.trades.v1 record forwarded
_ORIGINAL_MAX: Final = 65_536  # bytes of an oversized record kept in its dead letter


class Validate:
    """The stage's logic on the shared runner (agents.stage): each record of a take is
    checked, its bad events dead-lettered, its good ones forwarded. Its only state is the
    validator's duplicate-id memory, which answers a record read again the same way, so a
    take computed twice (after a poison record) forwards the same events."""

    def __init__(self, topics: Topics, settings: Settings) -> None:
        self.topics = topics
        self.settings = settings
        self.validator = Validator(ValidationRules.from_settings(settings))

    def reset(self) -> None:
        pass  # nothing to forget: see the class doc

    def compute(self, events: Sequence[Any], out: Output) -> None:
        for event in events:
            self._record(event, out)

    def _dlq(self, out: Output, key: bytes | None, source: tuple[str, int, int],
             reason: str, **kw: Any) -> None:  # fmt: skip
        DEAD_LETTERS.labels(STAGE, reason).inc()
        letter = dead_letter(stage=STAGE, reason=reason, source=source, key=key, **kw)
        out.send(self.topics.dlq, key, letter)

    def _record(self, event: Any, out: Output) -> None:
        msg = event.message
        data: bytes | None = event.value
        key: bytes | None = event.key
        source = (msg.topic, msg.partition, msg.offset)
        limit = self.settings.max_record_bytes
        if data is None:  # a tombstone: a record with no value at all
            EVENTS_IN.labels(STAGE).inc()
            self._dlq(out, key, source, "empty_record", detail="the record has no value")
            return
        if len(data) > limit:
            EVENTS_IN.labels(STAGE).inc()
            detail = f"{len(data)} bytes > {limit}"
            self._dlq(out, key, source, "oversized", detail=detail, original=data[:_ORIGINAL_MAX])
            return
        try:
            batch = decode_batch(data)
        except CodecError as exc:
            EVENTS_IN.labels(STAGE).inc()
            self._dlq(out, key, source, exc.reason, detail=exc.detail, original=data)
            return
        n = len(batch)
        EVENTS_IN.labels(STAGE).inc(n)
        BATCH_EVENTS.observe(n)
        shared = self.validator.record_reason(batch, key)
        reasons = (
            [shared[0]] * n
            if shared
            else self.validator.event_reasons(
                batch, time.time_ns(), source_id(msg.partition, msg.offset)
            )
        )
        bad = [i for i, r in enumerate(reasons) if r is not None]
        detail = shared[1] if shared else ""
        for i in bad:
            self._dlq(out, key, source, str(reasons[i]), detail=detail, event=batch.raw_event(i))
        if len(bad) == n:
            return
        if bad:
            ok = np.ones(n, dtype=bool)
            ok[bad] = False
            value = batch.select(ok).encode(validate_out=time.time_ns())
        else:
            value = data  # all valid: forward the bytes as they are, no re-encoding
        # The source position lets downstream state skip a re-forwarded record.
        src = f"{msg.partition}:{msg.offset}".encode()
        out.send(self.topics.events, batch.key.encode(), value, {SOURCE_HEADER: src})
        out.after.append(lambda: EVENTS_OUT.labels(STAGE).inc(n - len(bad)))


def register(app: faust.App, topics: Topics, settings: Settings) -> None:
    Stage(
        app,
        settings,
        name=STAGE,
        channel=topics.trades,
        dlq=topics.dlq,
        max_records=settings.validate_max_records,
        linger_s=settings.validate_linger_ms / 1000,
    ).run(Validate(topics, settings))
