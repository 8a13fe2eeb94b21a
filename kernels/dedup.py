"""Duplicate trade ids of one instrument, in a fixed-size NumPy ring. Pure.

validate remembers the last `window` distinct trade ids of each instrument, each with the
input record (source id) that first carried it, and flags an id as a duplicate when:

- it appeared earlier in the same record, or
- it is in the window and was first carried by another record.

An id first carried by this very record is not a duplicate of itself: a record read again
(a redelivery after a rebalance, a partition re-read by the commit watchdog) gets the same
answers as the first time. A record is checked against the window as it stood before it;
its new ids (first occurrences not in the window) are then remembered in record order,
evicting the oldest. Ids already rejected for another reason are left out by the caller.

Memory is two int64 arrays of `window` slots, allocated once (16 bytes per id), so it does
not grow as the window fills. Venues number their trades in increasing order, so nearly
every record lies wholly above the largest id remembered so far: it cannot hold a
remembered id, and only its own ids are compared with each other (O(n), no lookup). Any
other record is looked up against the window with a sort and a binary search.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]
BYTES_PER_ID: Final = 16  # one int64 trade id + one int64 source id
_NONE: Final = int(np.iinfo(np.int64).min)  # below any id: nothing remembered yet


class SeenIds:
    """The last `window` distinct trade ids of one instrument and the record that first
    carried each; fixed memory from the start."""

    __slots__ = ("_count", "_ids", "_next", "_sources", "max_id")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._ids: I64 = np.zeros(window, dtype=np.int64)
        self._sources: I64 = np.zeros(window, dtype=np.int64)
        self._next = 0  # slot the next id goes to (the oldest once full)
        self._count = 0  # slots in use
        self.max_id = _NONE  # largest id ever remembered (evicted ones included)

    @property
    def window(self) -> int:
        return len(self._ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the two arrays: the memory this instrument's window holds."""
        return self._ids.nbytes + self._sources.nbytes

    def __len__(self) -> int:
        return self._count

    def held(self) -> dict[int, int]:
        """Trade id → source id of what is remembered now (for tests and inspection)."""
        c = self._count
        return dict(zip(self._ids[:c].tolist(), self._sources[:c].tolist(), strict=True))

    def check(self, ids: npt.ArrayLike, source: int) -> BOOL:
        """Duplicate flags for one record's trade ids (in record order), then remember the
        record's new ids as first carried by `source`."""
        arr = np.asarray(ids, dtype=np.int64)
        dup = np.zeros(arr.size, dtype=np.bool_)
        if arr.size == 0:
            return dup
        if arr[0] > self.max_id and bool(np.all(arr[1:] > arr[:-1])):
            self._remember(arr, source)  # the usual case: all new, none repeated
            return dup
        uniq, first = np.unique(arr, return_index=True)
        if uniq.size != arr.size:  # every occurrence after an id's first one
            dup[:] = True
            dup[first] = False
        if uniq[0] > self.max_id:
            new = first
        else:
            known, carried_by = self._lookup(uniq)
            dup[first[known & (carried_by != source)]] = True
            new = first[~known]
        self._remember(arr[np.sort(new)], source)
        return dup

    def _lookup(self, uniq: I64) -> tuple[BOOL, I64]:
        """Whether each (sorted, distinct) id is remembered, and by which source."""
        c = self._count
        if c == 0:
            return np.zeros(uniq.size, dtype=np.bool_), np.zeros(uniq.size, dtype=np.int64)
        order = np.argsort(self._ids[:c])
        at = np.minimum(np.searchsorted(self._ids[:c][order], uniq), c - 1)
        slot = order[at]
        return self._ids[slot] == uniq, self._sources[slot]

    def _remember(self, new: I64, source: int) -> None:
        if new.size == 0:
            return
        self.max_id = max(self.max_id, int(new.max()))
        w = self.window
        new = new[-w:]  # more new ids than the window: only the last `w` would stay
        k = new.size
        end = self._next + k
        if end <= w:
            self._ids[self._next : end] = new
            self._sources[self._next : end] = source
        else:
            split = w - self._next
            self._ids[self._next :] = new[:split]
            self._sources[self._next :] = source
            self._ids[: end - w] = new[split:]
            self._sources[: end - w] = source
        self._next = end % w
        self._count = min(w, self._count + k)
