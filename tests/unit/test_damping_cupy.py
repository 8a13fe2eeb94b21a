"""CuPy backend parity with the NumPy float64 reference (docs/ARCHITECTURE.md#backends): 1e-9 in
float64, 1e-4 in float32 with iteration counts at most one apart.  Skipped unless cupy imports and a
CUDA device is usable.  ``kernel`` is the fused CUDA kernel (the cupy default); ``fused``,
``direct`` and ``horner`` the array-module methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from kernels import damping_gpu
from kernels.damping import _library_unit, available_backends, damp, damp_arrays, resolve_backend
from tests.unit.damping_inputs import MAKERS

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
@pytest.mark.parametrize("method", ["kernel", "fused", "direct", "horner"])
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


# --------------------------------------------------------------------------- the fused kernel


# Each bit-word count (NT) is a separate NVRTC compile: these cover NT = 1, 2, 4, 7, 8 and the
# word edges; tests/unit/test_damping_kernel_host.py runs every W of its list on the CPU.
GPU_WINDOWS = (8, 33, 34, 64, 65, 129, 200, 256, 257)


@pytest.mark.parametrize("w", GPU_WINDOWS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kernel_windows_8_to_257(w: int, dtype: str) -> None:
    """Random walks, tick-rounded GBM with jumps, flat and alternating windows, per W."""
    closes = np.concatenate([make(w, 4_000, w) for make in MAKERS])
    lib = np.random.default_rng(w).normal(size=(37, w - 1))
    ref = damp_arrays(closes, lib, backend="numpy", dtype=dtype)
    got = _host(damp_arrays(closes, lib, backend="cupy", dtype=dtype, method="kernel"))
    _assert_parity(got, ref, dtype, ref["stability"])


def test_kernel_host_pipeline_many_chunks() -> None:
    """Several chunks in flight on two streams, a partial last chunk, results to the host."""
    closes = _gbm_with_jumps(21, 100_003)
    ref = damp_arrays(closes, backend="numpy")
    for rows in (7_777, 50_000, 100_003):
        got = damp(closes, backend="cupy", chunk_rows=rows)
        fields = (*FLOAT_FIELDS, "iterations", "converged", "collapse")
        _assert_parity({f: getattr(got, f) for f in fields}, ref, "float64", ref["stability"])


def test_kernel_float32_transfer_of_tick_prices() -> None:
    """float64 ticks sent as float32 keep their bits: float32 parity holds."""
    closes = _gbm_with_jumps(22, 50_000)
    ref = damp_arrays(closes, backend="numpy", dtype="float32")
    got = damp(closes, backend="cupy", dtype="float32", transfer_dtype="float32")
    fields = (*FLOAT_FIELDS, "iterations", "converged", "collapse")
    _assert_parity({f: getattr(got, f) for f in fields}, ref, "float32", ref["stability"])
    out = _host(damp_arrays(closes, backend="cupy", method="kernel", transfer_dtype="float32"))
    assert out["lam"].dtype == np.float64


def test_kernel_float32_and_integer_closes() -> None:
    """Closes that are float32 or integers to begin with: the reference's bits and math."""
    ticks = _gbm_with_jumps(23, 20_000)
    for closes in (ticks.astype(np.float32), np.round(ticks * 100).astype(np.int64)):
        ref = damp_arrays(closes, backend="numpy")
        got = _host(damp_arrays(closes, backend="cupy", method="kernel"))
        _assert_parity(got, ref, "float64", ref["stability"])


@pytest.mark.parametrize("on_device", [False, True])
def test_kernel_rejects_non_finite_closes(on_device: bool) -> None:
    import cupy

    closes = _random_walks(24, 5_000)
    closes[4_321, 40] = np.nan
    arg = cupy.asarray(closes) if on_device else closes
    with pytest.raises(ValueError, match="non-finite"):
        damp_arrays(arg, backend="cupy", method="kernel")


def test_kernel_empty_batch() -> None:
    r = damp(np.empty((0, W)), backend="cupy")
    assert len(r) == 0 and r.lam.dtype == np.float64


def test_kernel_bounded_device_memory() -> None:
    """Host path: the pool holds about two chunks' inputs and outputs, not the batch."""
    import cupy

    pool = cupy.get_default_memory_pool()
    closes = _gbm_with_jumps(25, 200_000)
    rows = 20_000
    pool.free_all_blocks()
    damp(closes, backend="cupy", chunk_rows=rows)
    chunk_in = rows * W * 8
    per_chunk = chunk_in + rows * damping_gpu.out_row_bytes(np.float64)
    assert pool.total_bytes() <= damping_gpu.NBUF * per_chunk + (1 << 20)


@pytest.mark.parametrize("pinned", [True, False])
def test_kernel_pinned_and_pageable_results(pinned: bool) -> None:
    """Results written by the device into page-locked arrays, or copied into ordinary ones."""
    closes = _gbm_with_jumps(26, 30_001)
    ref = damp_arrays(closes, backend="numpy")
    unit = _library_unit(None, W - 2)
    stats: dict[str, float] = {}
    got = damping_gpu.damp_host(
        closes, unit, np.float64, chunk_rows=4_096, pinned_results=pinned, stats=stats
    )
    _assert_parity(got, ref, "float64", ref["stability"])
    assert stats["chunks"] == 8
    assert stats["pinned_results"] == float(pinned)
    # A strided (Fortran-order) view is staged the same way.
    again = damping_gpu.damp_host(
        np.asfortranarray(closes), unit, np.float64, chunk_rows=4_096, pinned_results=pinned
    )
    _assert_parity(again, ref, "float64", ref["stability"])
