"""The Burrow-style rules of kernels.lag_status, one state and edge case at a time."""

from __future__ import annotations

import pytest

from kernels.lag_status import (
    Observation,
    Status,
    current_window,
    evaluate_group,
    evaluate_partition,
    worst,
)

SIZE = 4


def obs(*points: tuple[int, int]) -> list[Observation]:
    """(committed, end) pairs, one second apart."""
    return [Observation(float(i), c, e) for i, (c, e) in enumerate(points)]


def judge(window: list[Observation], members: int | None = 1, progressed: bool = True) -> Status:
    return evaluate_partition(
        window, size=SIZE, members=members, group_progressed=progressed
    ).status


def test_caught_up_is_ok_even_when_nothing_moves() -> None:
    idle = obs((50, 50), (50, 50), (50, 50), (50, 50))
    assert judge(idle) is Status.OK
    assert judge(idle, members=0, progressed=False) is Status.OK  # idle and nobody there
    never_produced = obs((0, 0), (0, 0), (0, 0), (0, 0))
    assert judge(never_produced, progressed=False) is Status.OK


def test_catching_up_is_ok() -> None:
    assert judge(obs((0, 100), (40, 110), (80, 120), (115, 125))) is Status.OK


def test_steady_lag_that_zigzags_is_ok() -> None:
    # commits arrive between samples: the lag rises and falls around a level
    assert judge(obs((0, 30), (30, 55), (40, 90), (85, 110))) is Status.OK


def test_consuming_but_falling_behind_is_warning() -> None:
    v = evaluate_partition(
        obs((0, 100), (10, 200), (20, 300), (30, 400)),
        size=SIZE,
        members=1,
        group_progressed=True,
    )
    assert v.status is Status.WARNING and v.lag == 370


def test_one_shrinking_pair_is_enough_for_ok() -> None:
    assert judge(obs((0, 100), (10, 200), (150, 210), (160, 400))) is Status.OK


def test_constant_lag_while_moving_is_not_warning() -> None:
    # lag stays the same: keeping pace
    assert judge(obs((0, 10), (10, 20), (20, 30), (30, 40))) is Status.OK
    # sampled at the same small lag most of the time, one uptick: not a trend
    assert judge(obs((0, 10), (10, 20), (20, 30), (30, 50))) is Status.OK
    # grew in two of three pairs and never shrank: a trend
    assert judge(obs((0, 10), (10, 30), (20, 40), (30, 60))) is Status.WARNING


def test_stuck_partition_of_a_working_group_is_error() -> None:
    v = evaluate_partition(
        obs((5, 10), (5, 20), (5, 30), (5, 40)), size=SIZE, members=2, group_progressed=True
    )
    assert v.status is Status.ERROR and v.lag == 35


def test_unknown_membership_with_progress_elsewhere_is_error() -> None:
    assert judge(obs((5, 10), (5, 10), (5, 10), (5, 10)), members=None) is Status.ERROR


def test_no_commits_anywhere_while_behind_is_stopped() -> None:
    assert judge(obs((5, 10), (5, 20), (5, 30), (5, 40)), progressed=False) is Status.STOPPED


def test_no_members_while_behind_is_stopped_at_once() -> None:
    # no window needed: nobody is there to consume
    assert judge(obs((5, 10)), members=0, progressed=False) is Status.STOPPED


def test_records_that_arrived_after_catching_up_are_not_a_stall() -> None:
    # caught up, then new records just before the last sample, not committed yet
    fresh = obs((50, 50), (50, 50), (50, 50), (50, 53))
    assert judge(fresh, progressed=False) is Status.OK
    assert judge(fresh, members=0, progressed=False) is Status.STOPPED
    # still uncommitted once the caught-up sample has left the window: a stall
    later = [Observation(float(t), 50, 53) for t in (4, 5, 6)]
    assert judge([*fresh, *later], progressed=False) is Status.STOPPED


def test_window_not_full_is_ok_unless_nobody_consumes() -> None:
    short = obs((5, 10), (5, 20), (5, 30))
    v = evaluate_partition(short, size=SIZE, members=1, group_progressed=False)
    assert v.status is Status.OK and v.samples == 3 and "not full" in v.reason
    assert judge(short, members=0) is Status.STOPPED


def test_only_the_last_size_samples_count() -> None:
    # stuck long ago, moving within the last window
    window = obs((0, 100), (0, 100), (0, 100), (0, 100), (40, 140), (60, 150), (90, 160))
    assert judge(window) is Status.OK
    assert judge(window[:4], progressed=False) is Status.STOPPED


def test_offset_reset_restarts_the_window() -> None:
    # the group was reset to an earlier offset: samples before the reset no longer count
    window = obs((50, 100), (60, 120), (70, 140), (0, 150), (0, 160))
    assert current_window(window) == window[3:]
    v = evaluate_partition(window, size=SIZE, members=1, group_progressed=False)
    assert v.status is Status.OK and v.samples == 2  # not full again yet
    more = [*window, Observation(5.0, 0, 170), Observation(6.0, 0, 180)]
    assert judge(more, progressed=False) is Status.STOPPED


def test_topic_recreated_restarts_the_window() -> None:
    window = obs((90, 100), (90, 100), (90, 100), (0, 3))
    assert current_window(window) == window[3:]
    assert judge(window, progressed=False) is Status.OK


def test_group_verdicts_partition_added_and_progress() -> None:
    moving = obs((0, 100), (40, 110), (80, 120), (115, 125))
    stuck = obs((5, 10), (5, 20), (5, 30), (5, 40))
    added = obs((0, 7))  # a partition that appeared with the last sample
    got = evaluate_group({"p0": moving, "p1": stuck, "p2": added}, size=SIZE, members=1)
    assert got["p0"].status is Status.OK
    assert got["p1"].status is Status.ERROR  # the group progressed on p0
    assert got["p2"].status is Status.OK and got["p2"].samples == 1
    alone = evaluate_group({"p1": stuck, "p2": added}, size=SIZE, members=1)
    assert alone["p1"].status is Status.STOPPED
    assert worst([v.status for v in got.values()]) is Status.ERROR
    assert worst([]) is Status.OK
    assert evaluate_group({"p": []}, size=SIZE, members=1) == {}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_partition(obs((0, 0)), size=1, members=1, group_progressed=False)
    with pytest.raises(ValueError, match="no observation"):
        evaluate_partition([], size=SIZE, members=1, group_progressed=False)


def test_severity_order_and_lag() -> None:
    assert Status.OK < Status.WARNING < Status.ERROR < Status.STOPPED
    assert Observation(0.0, 10, 5).lag == 0  # committed past a truncated end
