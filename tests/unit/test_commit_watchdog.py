from __future__ import annotations

from streams.kafka.commit_watchdog import head_gaps


def test_head_gaps_only_where_an_earlier_record_was_never_acked() -> None:
    acked = {"a": [5, 6, 7], "b": [11, 12], "c": [], "d": [3], "e": [9]}
    committed: dict[str, int | None] = {"a": 5, "b": 9, "c": 4, "d": None, "e": 8}
    # a: contiguous from the committed offset; b: 9 and 10 missing; c: nothing acked;
    # d: no start known; e: offset 8 missing (Faust itself would let that one through);
    # "f" is not assigned here any more.
    assert head_gaps(acked, committed, ["a", "b", "c", "d", "e"]) == {"b": (9, 11), "e": (8, 9)}
    assert head_gaps({"f": [40]}, {"f": 1}, ["a"]) == {}
