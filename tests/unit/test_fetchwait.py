"""The adaptive fetch wait's policy (streams/kafka/fetchwait.py): grow while starved, ease off
while data comes, back to the base once nothing waits."""

from __future__ import annotations

from streams.kafka.fetchwait import AdaptiveFetchWait


def test_doubles_while_starved_up_to_the_cap() -> None:
    policy = AdaptiveFetchWait(10, cap_ms=100)
    waits = [policy.update(waiting=True, starved=True) for _ in range(5)]
    assert waits == [20, 40, 80, 100, 100]


def test_zero_base_still_grows() -> None:
    policy = AdaptiveFetchWait(0, cap_ms=8)
    assert [policy.update(waiting=True, starved=True) for _ in range(5)] == [1, 2, 4, 8, 8]


def test_eases_off_while_data_comes_and_resets_once_caught_up() -> None:
    policy = AdaptiveFetchWait(10)
    for _ in range(4):
        policy.update(waiting=True, starved=True)
    assert policy.wait_ms == 160
    # data came back, more is waiting (a busy stream): shorter by a quarter, not below 10
    eased = [policy.update(waiting=True, starved=False) for _ in range(12)]
    assert eased[:4] == [120, 90, 67, 50] and eased[-1] == 10
    policy.update(waiting=True, starved=True)
    assert policy.update(waiting=False, starved=False) == 10  # at the log end


def test_idle_at_the_log_end_keeps_the_base() -> None:
    policy = AdaptiveFetchWait(10)
    assert [policy.update(waiting=False, starved=False) for _ in range(3)] == [10, 10, 10]


def test_cap_never_below_base() -> None:
    assert AdaptiveFetchWait(500, cap_ms=100).cap_ms == 500
