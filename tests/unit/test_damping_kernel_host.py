"""The fused CUDA damping kernel's own source, compiled for the CPU, against the NumPy reference.

``kernels/damping_kernel.cu`` is compiled with g++ behind ``cuda_host_shim.h`` (a thread
block is a set of std::threads, ``__syncwarp`` a barrier) and loaded with ctypes, so its
logic is checked where CI has no GPU: 1e-9 and identical iteration counts in float64, 1e-4
and counts at most one apart in float32, on random walks, tick-rounded GBM with jumps, flat
and alternating windows, for W from 8 to 257.  The same comparisons run against the real
device in tests/unit/test_damping_cupy.py.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from kernels import damping_gpu
from kernels.damping import _library_unit, damp_arrays, default_library
from tests.unit.damping_inputs import MAKERS, WINDOWS, Maker, gbm_with_jumps, random_walks

HERE = Path(__file__).resolve().parent
SOURCE = Path(damping_gpu.__file__).resolve().parent / "damping_kernel.cu"
FLOAT_FIELDS = damping_gpu.OUT_FLOATS

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20)")


@dataclass(frozen=True)
class HostKernel:
    """The host build of one compile-time variant, and its library grouping."""

    lib: ctypes.CDLL
    group: int


# (SEPSTREAM_HORNER, SEPSTREAM_GROUP): the default first; the device may run any of them.
VARIANTS = [(1, damping_gpu.GROUP), (0, 1), (1, 4)]


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"horner{h}-group{g}" for h, g in VARIANTS])
def host_kernel(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> HostKernel:
    """The kernel source built as a shared library for the host, once per variant."""
    horner, group = request.param
    out = tmp_path_factory.mktemp("damping_kernel") / "libdamping_host.so"
    subprocess.run(
        [
            "g++",
            "-std=c++20",
            "-O2",
            "-shared",
            "-fPIC",
            "-pthread",
            "-fno-strict-aliasing",
            "-Wall",
            "-Werror",
            "-Wno-unknown-pragmas",
            f"-I{HERE}",
            f'-DSEPSTREAM_KERNEL_SOURCE="{SOURCE}"',
            f"-DSEPSTREAM_HORNER={horner}",
            f"-DSEPSTREAM_GROUP={group}",
            str(HERE / "damping_kernel_host.cpp"),
            "-o",
            str(out),
        ],
        check=True,
    )
    lib = ctypes.CDLL(str(out))
    lib.sepstream_damp_host.restype = ctypes.c_int
    lib.sepstream_damp_host.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_longlong,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_longlong,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    return HostKernel(lib, group)


def _run(
    kernel: HostKernel,
    closes: npt.NDArray[Any],
    library: Any = None,
    *,
    dtype: str = "float64",
    wire: Any = None,
) -> tuple[dict[str, npt.NDArray[Any]], bool]:
    """One emulated launch over all rows, laid out as the CuPy path lays it out.

    Returns the outputs (named as ``damp_arrays`` names them) and the non-finite flag.
    """
    ft = np.dtype(dtype)
    xs = np.ascontiguousarray(closes, dtype=wire if wire is not None else closes.dtype)
    n, w = xs.shape
    table = damping_gpu.library_table(_library_unit(library, w - 2), ft, kernel.group)
    layout = damping_gpu.output_layout(n, ft)
    buf = np.full(layout.nbytes, 0xA5, dtype=np.uint8)  # poison: every output must be written
    floats, iters, conv, coll = layout.views(buf)
    bad = np.zeros(1, dtype=np.int32)
    rc = kernel.lib.sepstream_damp_host(
        int(xs.dtype == np.float64),
        int(ft == np.float64),
        damping_gpu.words_for(w),
        xs.ctypes.data,
        n,
        w,
        table.ctypes.data,
        table.shape[1],
        floats.ctypes.data,
        n,
        iters.ctypes.data,
        conv.ctypes.data,
        coll.ctypes.data,
        bad.ctypes.data,
    )
    assert rc == 0
    out = {name: floats[k].copy() for k, name in enumerate(FLOAT_FIELDS)}
    assert set(np.unique(conv)) <= {0, 1} and set(np.unique(coll)) <= {0, 1}
    out.update(iterations=iters.copy(), converged=conv.astype(bool), collapse=coll.astype(bool))
    return out, bool(bad[0])


def _assert_parity(got: dict[str, Any], ref: dict[str, Any], dtype: str) -> None:
    atol = 1e-9 if dtype == "float64" else 1e-4
    for f in FLOAT_FIELDS:
        assert got[f].dtype == ref[f].dtype, f
        np.testing.assert_allclose(got[f], ref[f], rtol=0, atol=atol, err_msg=f)
    if dtype == "float64":
        np.testing.assert_array_equal(got["iterations"], ref["iterations"])
        np.testing.assert_array_equal(got["converged"], ref["converged"])
        np.testing.assert_array_equal(got["collapse"], ref["collapse"])
    else:
        assert int(np.abs(got["iterations"] - ref["iterations"]).max()) <= 1
        clear = np.abs((1.0 - ref["stability"]) - 0.30) > 1e-4
        np.testing.assert_array_equal(got["collapse"][clear], ref["collapse"][clear])


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("w", WINDOWS)
@pytest.mark.parametrize("make", MAKERS)
def test_float64_matches_reference(host_kernel: HostKernel, make: Maker, w: int) -> None:
    n = 600 if w > 128 else 1_500
    closes = make(w, n, w)
    lib = np.random.default_rng(w).normal(size=(37, w - 1))
    got, bad = _run(host_kernel, closes, lib)
    assert not bad
    _assert_parity(got, damp_arrays(closes, lib, backend="numpy"), "float64")


@pytest.mark.parametrize("w", (8, 33, 64, 129, 257))
@pytest.mark.parametrize("make", MAKERS)
def test_float32_matches_reference(host_kernel: HostKernel, make: Maker, w: int) -> None:
    closes = make(w + 1, 800, w)
    lib = np.random.default_rng(w + 1).normal(size=(64, w - 1))
    got, _ = _run(host_kernel, closes, lib, dtype="float32")
    _assert_parity(got, damp_arrays(closes, lib, backend="numpy", dtype="float32"), "float32")


def test_default_library_and_batch_not_a_multiple_of_the_block(host_kernel: HostKernel) -> None:
    """L = 3 (padded to 16), N = 333 (a partial block and a partial warp)."""
    closes = gbm_with_jumps(4, 333, 64)
    got, _ = _run(host_kernel, closes)
    _assert_parity(got, damp_arrays(closes, backend="numpy"), "float64")
    assert default_library(62).shape == (3, 63)


def test_float32_closes_with_float64_arithmetic(host_kernel: HostKernel) -> None:
    """Closes that are float32 to begin with: the same bits, the float64 reference math."""
    closes = gbm_with_jumps(6, 1_000, 64).astype(np.float32)
    got, _ = _run(host_kernel, closes, dtype="float64")
    _assert_parity(got, damp_arrays(closes, backend="numpy"), "float64")


def test_float32_wire_on_tick_prices(host_kernel: HostKernel) -> None:
    """float64 ticks sent as float32: bits survive the rounding, so float32 parity holds."""
    closes = gbm_with_jumps(7, 1_000, 64)
    got, _ = _run(host_kernel, closes, dtype="float32", wire=np.float32)
    _assert_parity(got, damp_arrays(closes, backend="numpy", dtype="float32"), "float32")


def test_zero_path_negative_and_zero_library_rows(host_kernel: HostKernel) -> None:
    """A zero path has confidence 0; a library whose best cosine is negative gives 0."""
    w = 64
    i = np.arange(w, dtype=np.float64)
    closes = np.stack([np.full(w, 5.0), 100.0 - i, 100.0 + i, 100.0 + i % 2])
    for lib in (None, -default_library(w - 2), np.zeros((2, w - 1))):
        got, _ = _run(host_kernel, closes, lib)
        ref = damp_arrays(closes, lib, backend="numpy")
        _assert_parity(got, ref, "float64")
    assert got["confidence"][0] == 0.0


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("column", [0, 31, 32, 63])
def test_non_finite_closes_raise_the_flag(
    host_kernel: HostKernel, value: float, column: int
) -> None:
    closes = random_walks(8, 300, 64)
    _, bad = _run(host_kernel, closes)
    assert not bad
    closes[217, column] = value
    _, bad = _run(host_kernel, closes)
    assert bad


# --------------------------------------------------------------------------- host-side helpers


def test_words_and_kernel_names() -> None:
    assert [damping_gpu.words_for(w) for w in (3, 33, 34, 64, 65, 66, 257)] == [1, 1, 2, 2, 2, 3, 8]
    assert damping_gpu.kernel_name(np.float64, "float32", 2) == (
        "sepstream::damp_windows<double, float, 2>"
    )
    with pytest.raises(ValueError, match=r"1\.\.8"):
        damping_gpu.kernel_name(np.float64, np.float64, 9)


def test_library_table_is_transposed_and_zero_padded() -> None:
    unit = _library_unit(np.random.default_rng(1).normal(size=(17, 63)), 62)
    table = damping_gpu.library_table(unit, np.float32, group=1)
    assert table.shape == (63, 32) and table.dtype == np.float32
    np.testing.assert_array_equal(table[:, :17], unit.T.astype(np.float32))
    assert not table[:, 17:].any()


@pytest.mark.parametrize(("dtype", "vec"), [(np.float64, 2), (np.float32, 4)])
def test_library_table_interleaves_group_positions(dtype: Any, vec: int) -> None:
    """Group position j's vector i of a superblock sits at vector slot i·G + j."""
    unit = _library_unit(np.random.default_rng(2).normal(size=(40, 63)), 62)
    g, lb = 2, damping_gpu.LIB_BLOCK
    table = damping_gpu.library_table(unit, dtype, group=g)
    assert table.shape == (63, 64)
    for row in range(64):
        s, rest = divmod(row, g * lb)
        j, within = divmod(rest, lb)
        i, e = divmod(within, vec)
        col = s * g * lb + (i * g + j) * vec + e
        want = unit[row].astype(dtype) if row < 40 else np.zeros(63, dtype)
        np.testing.assert_array_equal(table[:, col], want)


def test_output_layout_views_do_not_overlap() -> None:
    layout = damping_gpu.output_layout(5, np.float64)
    buf = np.zeros(layout.nbytes, dtype=np.uint8)
    floats, iters, conv, coll = layout.views(buf)
    floats[:] = 1.5
    iters[:] = 7
    conv[:] = 1
    coll[:] = 2
    assert layout.nbytes == 5 * damping_gpu.out_row_bytes(np.float64) == 5 * 54
    assert (floats == 1.5).all() and (iters == 7).all() and (conv == 1).all() and (coll == 2).all()


def test_chunk_rows_follow_free_memory() -> None:
    per_row = 64 * 8 + 6 * 8 + 6
    rows = damping_gpu.plan_chunk_rows(10**9, 64, x_itemsize=8, f_itemsize=8, free_bytes=100 << 30)
    assert rows == damping_gpu.CHUNK_INPUT_BYTES // (64 * 8)  # the overlap grain, not memory
    small = damping_gpu.plan_chunk_rows(10**9, 64, x_itemsize=8, f_itemsize=8, free_bytes=1 << 24)
    assert damping_gpu.NBUF * small * per_row <= (1 << 24) * damping_gpu.MEMORY_SHARE
    assert damping_gpu.plan_chunk_rows(10, 64, x_itemsize=8, f_itemsize=8, free_bytes=1 << 30) == 10
    assert (
        damping_gpu.plan_chunk_rows(
            10**6, 64, x_itemsize=8, f_itemsize=8, free_bytes=1 << 30, requested=3_001
        )
        == 3_001
    )
    with pytest.raises(MemoryError):
        damping_gpu.plan_chunk_rows(10, 64, x_itemsize=8, f_itemsize=8, free_bytes=100)
