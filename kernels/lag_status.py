"""Burrow-style consumer-lag status, judged over a sliding window of observations. Pure.

The monitor samples, per consumer group and partition, the committed offset and the log-end
offset every few seconds. A single sample says how far behind a consumer is, not whether it
is healthy: a busy consumer is always a little behind, an idle one never moves. So, as in
LinkedIn's Burrow, the verdict comes from how the offsets moved over the last `size`
samples of the partition (its window, oldest first).

Definitions (per partition): lag = max(0, end - committed). The committed offset "moved"
when it changed between two samples of the window. The group "made progress" when the
committed offset of any of its partitions moved inside that partition's window. A window
is "full" when it holds `size` samples.

Rules, first match wins:

0. Offsets reset: where the committed offset or the end offset goes DOWN between two
   samples (a group reset to an earlier position, a topic deleted and re-created), the
   samples before it are dropped; the window restarts there (and is no longer full).
1. OK when the latest lag is 0: caught up. An idle partition (nothing produced, nothing to
   commit) is therefore never an alarm, however long its offsets stand still.
2. STOPPED when the group has no members: nobody is there to consume what is behind.
3. OK when the lag was 0 at any sample of the window (Burrow's first rule): the consumer
   caught up within it, and records that arrived since may simply not be committed yet
   (commits come every commit interval; a sample can fall just after new records). A
   consumer that dies right after catching up is flagged once that sample leaves the window.
4. OK when the window is not full yet: not enough evidence (a partition just added, a
   monitor just started, a window just cut by a reset).
5. Committed offset did not move over the whole window while lag > 0:
   - ERROR (Burrow's STALLED partition) when the group is alive: it has members (or its
     membership is unknown) and made progress on another partition. The partition is
     stuck while its consumer works, e.g. a record that can never be acknowledged.
   - STOPPED otherwise: the group committed nothing anywhere during the window although it
     is behind. (Some brokers, the dev broker among them, keep a closed consumer listed as
     a member, so membership alone cannot prove a consumer is alive; commits can.)
6. WARNING when the committed offset moved but the lag shrank between no two consecutive
   samples and grew between more than half of them: the consumer works but does not keep
   up. One pair where the lag shrank is enough to call it OK, as in Burrow (a healthy
   consumer's lag zig-zags as it commits); requiring growth in most pairs, not just
   "never shrank", keeps a consumer whose lag merely sits at a small level (sampled at
   the same lag twice) from being flagged.
7. OK otherwise: catching up.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Observation", "Status", "Verdict", "evaluate_group", "evaluate_partition", "worst"]


class Status(IntEnum):
    """Ordered by severity, so the worst of several is `max()`; the value is the gauge's."""

    OK = 0
    WARNING = 1
    ERROR = 2  # Burrow's STALLED partition
    STOPPED = 3


@dataclass(frozen=True)
class Observation:
    """One sample of a partition for one group. `at` in seconds (any monotonic clock)."""

    at: float
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    lag: int
    samples: int  # samples the verdict was judged on (after a reset cut)


def current_window(window: Sequence[Observation]) -> Sequence[Observation]:
    """The samples since the last offset reset (rule 0)."""
    start = 0
    for i in range(1, len(window)):
        prev, cur = window[i - 1], window[i]
        if cur.committed < prev.committed or cur.end < prev.end:
            start = i
    return window[start:]


def moved(window: Sequence[Observation]) -> bool:
    """Whether the committed offset changed inside the window (after a reset cut)."""
    cut = current_window(window)
    return any(b.committed != a.committed for a, b in itertools.pairwise(cut))


def evaluate_partition(
    window: Sequence[Observation],
    *,
    size: int,
    members: int | None,
    group_progressed: bool,
) -> Verdict:
    """The status of one partition; `members` None means the broker did not say."""
    if size < 2:
        raise ValueError(f"a window needs at least 2 samples, got size={size}")
    if not window:
        raise ValueError("no observation to judge")
    cut = current_window(list(window)[-size:])
    last = cut[-1]
    n = len(cut)
    if last.lag == 0:
        return Verdict(Status.OK, "caught up", 0, n)
    if members == 0:
        return Verdict(Status.STOPPED, "behind and the group has no members", last.lag, n)
    if any(o.lag == 0 for o in cut):
        return Verdict(Status.OK, "caught up within the window", last.lag, n)
    if n < size:
        return Verdict(Status.OK, f"window not full ({n}/{size} samples)", last.lag, n)
    first = cut[0]
    if last.committed == first.committed:
        if group_progressed:
            return Verdict(
                Status.ERROR,
                "committed offset not moving while behind; the group commits elsewhere",
                last.lag,
                n,
            )
        return Verdict(
            Status.STOPPED, "no commits by the group during the window while behind", last.lag, n
        )
    pairs = list(itertools.pairwise(cut))
    never_shrank = all(b.lag >= a.lag for a, b in pairs)
    grew = sum(1 for a, b in pairs if b.lag > a.lag)
    if never_shrank and 2 * grew > len(pairs):
        return Verdict(Status.WARNING, "consuming, but the lag grows", last.lag, n)
    return Verdict(Status.OK, "consuming and catching up", last.lag, n)


def evaluate_group[K: Hashable](
    windows: Mapping[K, Sequence[Observation]], *, size: int, members: int | None
) -> dict[K, Verdict]:
    """Every partition of one group (keys are the caller's, e.g. (topic, partition))."""
    progressed = any(moved(list(w)[-size:]) for w in windows.values())
    return {
        key: evaluate_partition(w, size=size, members=members, group_progressed=progressed)
        for key, w in windows.items()
        if w
    }


def worst(statuses: Sequence[Status]) -> Status:
    return max(statuses, default=Status.OK)
