"""Closes for the damping kernel's parity tests (host-compiled and on the GPU).

Each maker takes (seed, n, w) and returns an (n, w) float64 array.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Maker = Callable[[int, int, int], npt.NDArray[np.float64]]


def random_walks(seed: int, n: int, w: int) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return 100.0 + np.cumsum(rng.normal(0.0, 1.0, size=(n, w)), axis=1)


def gbm_with_jumps(seed: int, n: int, w: int) -> npt.NDArray[np.float64]:
    """GBM with Poisson jumps, rounded to a 0.01 tick so flat bars occur."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.0005, 0.02, size=(n, 1))
    rets = rng.normal(0.0, 0.001, size=(n, 1)) + sigma * rng.standard_normal((n, w))
    rets += np.where(rng.random((n, w)) < 0.02, rng.normal(0.0, 0.05, size=(n, w)), 0.0)
    start = rng.uniform(1.0, 50_000.0, size=(n, 1))
    return np.round(start * np.exp(np.cumsum(rets, axis=1)), 2)


def flat_and_alternating(seed: int, n: int, w: int) -> npt.NDArray[np.float64]:
    """Flat, strictly alternating, monotone and mostly-flat windows (edge cases of the math)."""
    rng = np.random.default_rng(seed)
    i = np.arange(w, dtype=np.float64)
    shapes = [
        np.full(w, 42.0),
        100.0 + (i % 2),  # up, down, up, ...
        100.0 - (i % 2),  # down, up, down, ...
        100.0 + i,  # all rupture
        100.0 - i,  # all null
        100.0 + (i % 3 == 0),
        np.where(i < w // 2, 100.0, 100.0 + i),  # flat then rising
    ]
    rows = [shapes[k % len(shapes)] for k in range(n // 2)]
    blocks = rng.integers(1, 4, size=(n - n // 2, w)).astype(np.float64)
    rows.extend(np.cumsum(np.where(rng.random((n - n // 2, w)) < 0.6, 0.0, blocks), axis=1))
    return np.stack(rows)


MAKERS: tuple[Maker, ...] = (random_walks, gbm_with_jumps, flat_and_alternating)
WINDOWS = (8, 9, 31, 32, 33, 34, 63, 64, 65, 97, 128, 129, 200, 256, 257)
