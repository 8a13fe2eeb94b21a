"""CuPy backend parity with the NumPy float64 reference (DESIGN §5): 1e-9 in float64, 1e-4 in
float32 with iteration counts at most one apart.  Skipped unless cupy imports and a CUDA
device is usable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from kernels.damping import available_backends, damp, damp_arrays, resolve_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "cupy" not in available_backends(), reason="needs cupy and a usable CUDA device"
    ),
]

FLOAT_FIELDS = ("entropy", "coherence", "stability", "lam", "value", "confidence")
W = 64
Maker = Callable[[int, int], npt.NDArray[np.float64]]


def _random_walks(seed: int, n: int) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return 100.0 + np.cumsum(rng.normal(0.0, 1.0, size=(n, W)), axis=1)


def _gbm_with_jumps(seed: int, n: int) -> npt.NDArray[np.float64]:
    """GBM with Poisson jumps, rounded to a 0.01 tick so flat bars occur."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.0005, 0.02, size=(n, 1))
    rets = rng.normal(0.0, 0.001, size=(n, 1)) + sigma * rng.standard_normal((n, W))
    rets += np.where(rng.random((n, W)) < 0.02, rng.normal(0.0, 0.05, size=(n, W)), 0.0)
    start = rng.uniform(1.0, 50_000.0, size=(n, 1))
    return np.round(start * np.exp(np.cumsum(rets, axis=1)), 2)


def _library(seed: int) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).normal(size=(64, W - 1))


def _host(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v.get() for k, v in out.items()}


def _assert_parity(
    got: dict[str, Any], ref: dict[str, Any], dtype: str, stability_ref: npt.NDArray[Any]
) -> None:
    atol = 1e-9 if dtype == "float64" else 1e-4
    for f in FLOAT_FIELDS:
        np.testing.assert_allclose(got[f], ref[f], rtol=0, atol=atol, err_msg=f)
    diff = np.abs(got["iterations"].astype(np.int64) - ref["iterations"])
    if dtype == "float64":
        np.testing.assert_array_equal(got["iterations"], ref["iterations"])
        np.testing.assert_array_equal(got["converged"], ref["converged"])
        np.testing.assert_array_equal(got["collapse"], ref["collapse"])
    else:
        assert int(diff.max()) <= 1
        clear = np.abs((1.0 - stability_ref) - 0.30) > 1e-4
        np.testing.assert_array_equal(got["collapse"][clear], ref["collapse"][clear])


@pytest.mark.parametrize("make", [_random_walks, _gbm_with_jumps])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", ["fused", "direct", "horner"])
def test_cupy_matches_numpy(make: Maker, dtype: str, method: str) -> None:
    closes, lib = make(3, 50_000), _library(5)
    ref = damp_arrays(closes, lib, backend="numpy", dtype=dtype)
    got = _host(damp_arrays(closes, lib, backend="cupy", dtype=dtype, method=method))
    for name, arr in got.items():
        assert arr.dtype == ref[name].dtype, name
    _assert_parity(got, ref, dtype, ref["stability"])


@pytest.mark.parametrize("make", [_random_walks, _gbm_with_jumps])
def test_public_damp_on_cupy_returns_numpy(make: Maker) -> None:
    closes = make(8, 10_000)
    ref = damp(closes, backend="numpy", library_version="v1")
    got = damp(closes, backend="cupy", library_version="v1")
    assert got.backend == "cupy"
    assert got.library_version == "v1"
    assert resolve_backend("auto") == "cupy"
    fields = (*FLOAT_FIELDS, "iterations", "converged", "collapse")
    for f in fields:
        assert isinstance(getattr(got, f), np.ndarray), f
    _assert_parity(
        {f: getattr(got, f) for f in fields},
        {f: getattr(ref, f) for f in fields},
        "float64",
        ref.stability,
    )


def test_device_resident_input_and_chunking() -> None:
    import cupy

    closes = _random_walks(13, 20_000)
    ref = damp_arrays(closes, backend="numpy")
    on_device = cupy.asarray(closes)
    whole = _host(damp_arrays(on_device, backend="cupy"))
    chunked = _host(damp_arrays(on_device, backend="cupy", chunk_rows=3_001))
    _assert_parity(whole, ref, "float64", ref["stability"])
    _assert_parity(chunked, ref, "float64", ref["stability"])


def test_zero_path_and_flat_rows_on_cupy() -> None:
    closes = np.stack(
        [np.full(W, 5.0), 100.0 - np.arange(W), 100.0 + np.arange(W), 100.0 + np.arange(W) % 2]
    )
    ref = damp(closes, backend="numpy")
    got = damp(closes, backend="cupy")
    assert got.confidence[0] == 0.0
    assert got.confidence[1] == 0.0
    for f in (*FLOAT_FIELDS, "iterations", "converged", "collapse"):
        np.testing.assert_allclose(getattr(got, f), getattr(ref, f), rtol=0, atol=1e-12)
