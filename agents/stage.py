"""The one loop every processing stage runs: take → compute → publish → save → ack.

A stage (validate, bars, indicators, damping) supplies a `StageLogic`: `compute` folds a
micro-batch of input records into the stage's in-memory state and says what to send and
which table states to save; `reset` forgets that in-memory state. The runner does the rest,
the same way for every stage (docs/ARCHITECTURE.md, "Stages"):

1. compute the whole take. If anything a record makes the stage do raises (decode,
   validation, arithmetic, state), the in-memory state is reset and the take is computed
   again one record at a time; each record that raises on its own is dead-lettered with the
   stage, the reason `stage_error`, the exception class and the original bytes, and the
   stage goes on. A record is never skipped without a dead letter.
2. publish: every record to send (the stage's outputs and its dead letters) is sent forced
   and the broker's acks are awaited (retried while the broker is away);
3. save the changed table states, after the outputs are delivered (a crash in between
   recomputes the same outputs from the old state; the sinks upsert);
4. ack the input records, so Faust commits their offsets only after all of the above.

When partitions are revoked the runner makes the stage forget its in-memory state (another
worker may own those instruments now). What the stateful stages share around the loop is
here too: their state table (`state_table`), the redelivery check on the input position
last applied per instrument (`redelivered`), and the reading of md.bars.v1 takes
(`bar_records`).

Progress (`StageProgress`) is recorded for `/healthz`: a stage with input waiting that has
not finished a take for `stage_stall_s` is reported as stalled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust
import structlog

from agents.delivery import delivered, retry_forever
from schemas.batch import CodecError, MarketEventBatch, decode_batch
from schemas.deadletter import dead_letter
from schemas.events import Kind
from streams.ops.metrics import DEAD_LETTERS, EVENTS_IN
from streams.ops.progress import track
from streams.settings import Settings

log = structlog.get_logger(__name__)

STAGE_ERROR = "stage_error"  # the reason code of a record a stage raised on


@dataclass
class Output:
    """What one compute produced: records to send, table states to save, and follow-ups
    (metrics, cache updates) to run once both are done."""

    sends: list[tuple[faust.TopicT, bytes | None, bytes, dict[str, bytes] | None]] = field(
        default_factory=list
    )
    states: dict[bytes, bytes] = field(default_factory=dict)
    after: list[Callable[[], None]] = field(default_factory=list)

    def send(
        self,
        topic: faust.TopicT,
        key: bytes | None,
        value: bytes,
        headers: dict[str, bytes] | None = None,
    ) -> None:
        self.sends.append((topic, key, value, headers))

    def merge(self, other: Output) -> None:
        self.sends += other.sends
        self.states.update(other.states)
        self.after += other.after


class StageLogic(Protocol):
    """What a stage does with its records; everything else is the runner's."""

    def compute(self, events: Sequence[Any], out: Output) -> None:
        """Fold `events` (Faust events, in order) into the state; fill `out`. May raise."""

    def reset(self) -> None:
        """Forget the in-memory state: the next compute reloads it via `Stage.stored`."""


def state_table(app: faust.App, settings: Settings, name: str) -> Any:
    """A stage's state table: the encoded state per instrument key (`venue:symbol`, the key
    of its input records), on a compacted changelog with the hot topics' partitions, so an
    instrument's state moves with its input partition (docs/ARCHITECTURE.md#state)."""
    return app.Table(
        name,
        default=None,
        key_type=bytes,  # Faust derives the changelog's serializers from these types
        value_type=bytes,
        partitions=settings.partitions,
        use_partitioner=True,  # partition writes by key: timers write outside any input event
    )


def redelivered(last: tuple[int, int] | None, position: tuple[int, int]) -> bool:
    """Whether the record at `position` (partition, offset) was applied before: `last` is the
    position of the last record applied for its instrument, which always comes from one
    partition (docs/ARCHITECTURE.md#redelivery)."""
    return last is not None and last[0] == position[0] and position[1] <= last[1]


def bar_records(
    events: Sequence[Any],
) -> Iterator[tuple[bytes, MarketEventBatch, tuple[int, int]]]:
    """The bar batches of a take of md.bars.v1 records, each with its instrument key and its
    record's (partition, offset); records that hold no bars are passed over (the timescale
    sink dead-letters undecodable ones)."""
    for event in events:
        try:
            batch = decode_batch(event.value)
        except CodecError:
            continue
        if batch.kind is Kind.BAR and batch.timeframe:
            msg = event.message
            yield batch.key.encode(), batch, (msg.partition, msg.offset)


class Stage:
    """Runs one `StageLogic` as a Faust agent on `channel` (module doc)."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        *,
        name: str,
        channel: faust.TopicT,
        dlq: faust.TopicT,
        max_records: int,
        linger_s: float,
        table: Any = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.name = name
        self.dlq = dlq
        self.table = table
        self.lock = asyncio.Lock()  # one take (or timer step) computes and publishes at a time
        self.progress = track(app, name)
        self._changelog_known = False
        self._staged: dict[bytes, bytes] = {}  # states computed but not yet saved
        self._logic: StageLogic | None = None
        self._ready: Callable[[], Awaitable[None]] | None = None
        self._inputs: list[Any] = []
        self.progress.queued = lambda: sum(s.channel.queue.qsize() for s in self._inputs)

        async def agent(stream: faust.StreamT[bytes]) -> None:
            self._inputs[:] = [stream]  # one actor per stage; a restarted one replaces it
            # noack_take is on faust.Stream; the StreamT protocol does not declare it
            async for events in stream.noack_take(  # type: ignore[attr-defined]
                max_records, within=linger_s
            ):
                if self._ready is not None:
                    await self._ready()
                async with self.lock:
                    self.progress.busy_since = time.monotonic()
                    await self.publish(self.compute(events))
                for event in events:
                    await stream.ack(event)
                self.progress.done()

        app.agent(channel, name=name)(agent)

    def run(
        self,
        logic: StageLogic,
        ready: Callable[[], Awaitable[None]] | None = None,
        forget: Callable[[], None] | None = None,
    ) -> None:
        """Start computing with `logic`; `ready`, if given, is awaited before each take, and
        `forget` (default `logic.reset`) is called when partitions are revoked."""
        self._logic = logic
        self._ready = ready
        on_revoke = logic.reset if forget is None else forget

        # mode types signal receivers oddly
        @self.app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def revoked(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
            """Another worker may own these instruments now; reload from the table when needed."""
            on_revoke()

    @property
    def logic(self) -> StageLogic:
        assert self._logic is not None, f"stage {self.name}: run(logic) was not called"
        return self._logic

    def stored(self, key: bytes) -> bytes | None:
        """The state of `key` as last computed: staged in this take, else the table's."""
        staged = self._staged.get(key)
        if staged is not None:
            return staged
        if self.table is None:
            return None
        value: bytes | None = self.table.get(key)
        return value

    def compute(self, events: Sequence[Any]) -> Output:
        """The take's output; records that make the stage raise are dead-lettered."""
        out = Output()
        try:
            self.logic.compute(events, out)
            return out
        except Exception as exc:
            if len(events) == 1:
                self.logic.reset()
                self._dead_letter(events[0], exc, out := Output())
                return out
            log.warning("a record failed the stage; retrying the take record by record",
                        stage=self.name, error=repr(exc), records=len(events))  # fmt: skip
        self.logic.reset()
        out = Output()
        self._staged.clear()
        for event in events:
            part = Output()
            try:
                self.logic.compute([event], part)
            except Exception as exc:
                self.logic.reset()  # its half-applied effect is discarded
                self._dead_letter(event, exc, out)
                continue
            out.merge(part)
            self._staged.update(part.states)
        self._staged.clear()
        return out

    def _dead_letter(self, event: Any, exc: BaseException, out: Output) -> None:
        msg = event.message
        EVENTS_IN.labels(self.name).inc()
        DEAD_LETTERS.labels(self.name, STAGE_ERROR).inc()
        log.error("record dead-lettered: the stage raised on it", stage=self.name,
                  topic=msg.topic, partition=msg.partition, offset=msg.offset,
                  error=repr(exc))  # fmt: skip
        key: bytes | None = event.key
        letter = dead_letter(
            stage=self.name,
            reason=STAGE_ERROR,
            detail=str(exc)[:1000],
            error=type(exc).__name__,
            source=(msg.topic, msg.partition, msg.offset),
            key=key,
            original=event.value,
        )
        out.send(self.dlq, key, letter)

    async def _know_changelog(self) -> None:
        """Make the producer fetch the changelog topic's metadata, once.

        faust-streaming 0.15.3 partitions a table write (`use_partitioner`) with the metadata
        aiokafka 0.14's producer already holds, without fetching it: on a new cluster a
        changelog topic it never sent to is unknown there, and the write fails with
        `'NoneType' object is not iterable`. `partitions_for` fetches and keeps it.
        """
        if self._changelog_known:
            return
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        topic = self.table.changelog_topic.get_topic_name()
        await retry_forever(f"{self.name}-metadata", lambda: producer.partitions_for(topic), 5.0)
        self._changelog_known = True

    async def publish(self, out: Output) -> None:
        """Send `out`, wait for the broker, save the states, run the follow-ups."""

        async def attempt(sends: Sequence[Any]) -> None:
            deliveries: list[Awaitable[Any]] = [
                await topic.send(key=key, value=value, headers=headers, force=True)
                for topic, key, value, headers in sends
            ]
            await delivered(deliveries)

        if out.sends:
            await retry_forever(f"{self.name}-publish", lambda: attempt(out.sends), 5.0)
        if self.table is not None and out.states:
            await self._know_changelog()
            for key, value in out.states.items():
                self.table[key] = value
        for follow_up in out.after:
            follow_up()
