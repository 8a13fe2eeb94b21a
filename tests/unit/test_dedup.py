"""kernels.dedup: the duplicate-id ring gives the answers of a plain dict + deque model, over
random id streams with repeats, re-read records and eviction, in fixed memory."""

from __future__ import annotations

import tracemalloc
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.dedup import BYTES_PER_ID, SeenIds


class Reference:
    """The semantics spelled out one id at a time: a record is checked against the window
    as it stood before it, then its new ids are remembered in record order."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.first: dict[int, int] = {}  # trade id → source that first carried it
        self.order: deque[int] = deque()

    def check(self, ids: list[int], source: int) -> list[bool]:
        flags, here, new = [], set[int](), []
        for t in ids:
            carried_by = self.first.get(t)
            flags.append(t in here or (carried_by is not None and carried_by != source))
            if carried_by is None and t not in here:
                new.append(t)
            here.add(t)
        for t in new:
            self.first[t] = source
            self.order.append(t)
            if len(self.order) > self.window:
                del self.first[self.order.popleft()]
        return flags


def test_within_and_across_records() -> None:
    s = SeenIds(8)
    assert s.check([1, 2, 2, 3], source=10).tolist() == [False, False, True, False]
    assert s.check([3, 4, 4], source=11).tolist() == [True, False, True]
    assert s.held() == {1: 10, 2: 10, 3: 10, 4: 11}


def test_a_record_read_again_gets_the_same_answers() -> None:
    s = SeenIds(8)
    first = s.check([5, 6, 5], source=1).tolist()
    s.check([7, 8], source=2)
    assert s.check([5, 6, 5], source=1).tolist() == first == [False, False, True]
    assert s.check([5, 9], source=3).tolist() == [True, False]  # another record: duplicate
    assert s.held() == {5: 1, 6: 1, 7: 2, 8: 2, 9: 3}  # the re-read remembered nothing new


def test_out_of_order_ids_are_looked_up() -> None:
    s = SeenIds(8)
    s.check([10, 11, 12], source=1)
    assert s.max_id == 12
    # below the high-water mark: new ones pass, remembered ones are caught
    assert s.check([3, 11, 13], source=2).tolist() == [False, True, False]
    assert s.max_id == 13
    assert s.held() == {10: 1, 11: 1, 12: 1, 3: 2, 13: 2}


def test_window_evicts_the_oldest_and_wraps() -> None:
    s = SeenIds(3)
    s.check([1, 2], source=1)
    s.check([3, 4], source=2)  # 1 evicted; the ring wraps
    assert s.held() == {2: 1, 3: 2, 4: 2}
    assert len(s) == 3
    assert s.check([1, 2], source=3).tolist() == [False, True]  # 1 forgotten, 2 still held
    assert s.held() == {3: 2, 4: 2, 1: 3}


def test_record_larger_than_the_window() -> None:
    s = SeenIds(4)
    ids = np.arange(100, 110)
    assert not s.check(ids, source=1).any()
    assert s.held() == {106: 1, 107: 1, 108: 1, 109: 1}
    assert s.max_id == 109
    assert s.check([100], source=2).tolist() == [False]  # evicted within its own record


def test_empty_record_and_bad_window() -> None:
    s = SeenIds(2)
    assert s.check(np.array([], dtype=np.int64), source=1).size == 0
    assert len(s) == 0
    with pytest.raises(ValueError, match="window"):
        SeenIds(0)


def test_memory_is_fixed_when_the_instrument_is_first_seen() -> None:
    window = 4_096

    def feed(s: SeenIds) -> None:  # ten windows' worth, increasing, overlapping, out of order
        for r in range(40):
            s.check(np.arange(r * 1_000, r * 1_000 + 1_024), source=r)
        s.check(np.arange(0, 2_000, 3), source=99)

    feed(SeenIds(window))  # NumPy's one-off lazy set-up is not the ring's
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        s = SeenIds(window)
        created = tracemalloc.get_traced_memory()[0] - base
        feed(s)
        full = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert s.nbytes == BYTES_PER_ID * window
    assert BYTES_PER_ID * window <= created <= BYTES_PER_ID * window + 1_024
    # 41,000+ ids went through; what stayed beyond the arrays is NumPy's small caches
    assert full - created <= 1_024
    assert len(s) == window


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), st.data())
def test_matches_the_reference(window: int, data: st.DataObject) -> None:
    ring, ref = SeenIds(window), Reference(window)
    records: list[tuple[list[int], int]] = []
    top = -1  # largest id drawn so far
    for step in range(data.draw(st.integers(1, 30), label="records")):
        choice = data.draw(st.sampled_from(["random", "increasing", "reread"]), label="kind")
        if choice == "reread" and records:
            ids, source = records[data.draw(st.integers(0, len(records) - 1), label="which")]
        elif choice == "increasing":  # the fast path: all above what was seen, maybe repeats
            gaps = data.draw(st.lists(st.integers(0, 2), min_size=1, max_size=8), label="gaps")
            ids = (top + 1 + np.cumsum(gaps)).tolist()
            source = step
        else:
            ids = data.draw(st.lists(st.integers(0, 20), max_size=10), label="ids")
            source = step
        records.append((ids, source))
        top = max([top, *ids])
        want = ref.check(ids, source)
        assert ring.check(np.array(ids, dtype=np.int64), source).tolist() == want, (ids, source)
        assert ring.held() == ref.first
