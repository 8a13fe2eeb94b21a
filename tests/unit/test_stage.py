"""The shared stage runner's poison handling (agents.stage), on a stage of its own.

A counting stage keeps a running sum per key in a table; a record holding `boom` makes it
raise half-way through its update. Whatever the take, the result must be that of the same
take without the poison records: their effect discarded, every other record counted once
(also the ones after the poison for the same key), one dead letter per poison record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
import pytest

from agents.stage import STAGE_ERROR, Output, Stage
from streams.settings import Settings
from tests.dead_letters import read_dead_letter


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int


@dataclass
class Ev:
    key: bytes
    value: bytes
    message: Msg


class Counting:
    def __init__(self, stage: Stage, out_topic: Any) -> None:
        self.stage = stage
        self.out_topic = out_topic
        self.sums: dict[bytes, int] = {}

    def reset(self) -> None:
        self.sums.clear()

    def compute(self, events: Sequence[Any], out: Output) -> None:
        for ev in events:
            if ev.key not in self.sums:
                stored = self.stage.stored(ev.key)
                self.sums[ev.key] = 0 if stored is None else int(stored)
            self.sums[ev.key] += 1  # applied before the check: a half-done update
            if ev.value == b"boom":
                raise ValueError("boom")
            out.send(self.out_topic, ev.key, ev.value)
        for key, total in self.sums.items():
            out.states[key] = str(total).encode()


@pytest.fixture
def stage() -> tuple[Stage, dict[bytes, bytes], Any]:
    app = faust.App("stage-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    table: dict[bytes, bytes] = {}
    out_topic, dlq = app.topic("out"), app.topic("dlq")
    st = Stage(
        app,
        Settings(),
        name="counting",
        channel=app.topic("in"),
        dlq=dlq,
        max_records=10,
        linger_s=0.01,
        table=table,
    )
    st.run(Counting(st, out_topic))
    return st, table, dlq


def _events(values: list[tuple[bytes, bytes]]) -> list[Ev]:
    return [Ev(k, v, Msg("in", 0, i)) for i, (k, v) in enumerate(values)]


def test_a_clean_take_is_computed_once(stage: tuple[Stage, dict[bytes, bytes], Any]) -> None:
    st, table, _ = stage
    table[b"a"] = b"10"
    out = st.compute(_events([(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]))
    assert out.states == {b"a": b"12", b"b": b"1"}
    assert [v for _, _, v, _ in out.sends] == [b"1", b"2", b"3"]


@pytest.mark.parametrize("poison_at", [[0], [1], [3], [1, 2], [0, 4]])
def test_poison_records_are_dead_lettered_and_the_rest_counted_once(
    stage: tuple[Stage, dict[bytes, bytes], Any], poison_at: list[int]
) -> None:
    st, table, dlq = stage
    table[b"a"] = b"10"
    values = [(b"a", b"1"), (b"a", b"2"), (b"b", b"3"), (b"a", b"4"), (b"b", b"5")]
    for i in poison_at:
        values[i] = (values[i][0], b"boom")
    out = st.compute(_events(values))
    clean = [kv for i, kv in enumerate(values) if i not in poison_at]
    sums = {b"a": 10, b"b": 0}
    for k, _ in clean:
        sums[k] += 1
    assert {k: int(v) for k, v in out.states.items()} == sums
    letters = [read_dead_letter(v) for topic, _, v, _ in out.sends if topic is dlq]
    assert [d["offset"] for d in letters] == poison_at
    assert {(d["stage"], d["reason"], d["error"]) for d in letters} == {
        ("counting", STAGE_ERROR, "ValueError")
    }
    assert all(d["original"] == b"boom" for d in letters)
    assert [v for t, _, v, _ in out.sends if t is not dlq] == [v for _, v in clean]
