"""The fused CUDA damping kernel (``damping_kernel.cu``) and the CuPy code that feeds it.

One thread per window computes all of kernels/damping.py's math in registers: no (N, T)
temporaries, one launch per chunk of rows.  Around it:

* device-resident closes: one launch over the rows (or ``chunk_rows`` at a time), outputs
  left on the device;
* host closes: the rows go through pinned buffers in chunks sized from the free device
  memory, two chunks in flight on two streams, so the copy of one chunk into pinned memory,
  its host-to-device transfer, the kernel and the device-to-host transfer of the previous
  chunk overlap.  Device memory holds two chunks' inputs and outputs at most.  The closes
  travel in their own precision, or as float32 when the caller allows it
  (``transfer_dtype="float32"``: half the bytes; a close whose float32 rounding equals its
  neighbour's then reads as flat).

The parts that need no GPU (names, layouts, the library table, chunk sizes) are plain
functions here, tested without cupy; the kernel's own source is tested on the CPU by
compiling it for the host (tests/unit/test_damping_kernel_host.py).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "BLOCK",
    "KERNEL_SOURCE",
    "LIB_BLOCK",
    "MAX_WINDOW",
    "OUT_FLOATS",
    "OutputLayout",
    "damp_device",
    "damp_host",
    "kernel_name",
    "library_table",
    "output_layout",
    "plan_chunk_rows",
    "prepared_launch",
    "words_for",
]

KERNEL_SOURCE: Final = resources.files("kernels").joinpath("damping_kernel.cu").read_text("utf-8")
BLOCK: Final = 128  # SEPSTREAM_BLOCK in the source
LIB_BLOCK: Final = 16  # SEPSTREAM_LB: library rows per pass
MAX_WORDS: Final = 8
MAX_WINDOW: Final = 32 * MAX_WORDS + 1  # W - 1 bits in at most 8 words
OUT_FLOATS: Final = ("entropy", "coherence", "stability", "lam", "value", "confidence")
# Compile-time variants (the bench compares them on the device): the register cap through
# __launch_bounds__ (minimum blocks per multiprocessor) and the weighted-sum scheme
# (1: 16-entry tables of 4-position patterns, 0: one term per position).
MIN_BLOCKS: Final = 2
HORNER: Final = 1
GROUP: Final = 2
NBUF: Final = 2  # chunks in flight on the host path
# Closes per chunk on the host path: the overlap grain (H200, N = 4e6 float64, host to host:
# 32 MiB 38M/s, 64 MiB 58M/s, 128 MiB 62M/s, 256 MiB 64M/s windows; docs/BENCHMARKS.md).
CHUNK_INPUT_BYTES: Final = 128 << 20
PINNED_RESULT_BYTES: Final = 1 << 30  # results up to this size are page-locked (damp_host)
MEMORY_SHARE: Final = 0.5  # of the free device memory, at most, for the host path's buffers
_CTYPES: Final = {np.dtype(np.float64): "double", np.dtype(np.float32): "float"}


def words_for(w: int) -> int:
    """32-bit words holding the W-1 bits of a window (the kernel's NT)."""
    return max(1, -(-(w - 1) // 32))


def kernel_name(x_dtype: Any, f_dtype: Any, nt: int) -> str:
    """The template instantiation for closes of ``x_dtype`` and arithmetic in ``f_dtype``."""
    x, f = _CTYPES[np.dtype(x_dtype)], _CTYPES[np.dtype(f_dtype)]
    if not 1 <= nt <= MAX_WORDS:
        raise ValueError(f"window needs {nt} words of bits; the kernel holds 1..{MAX_WORDS}")
    return f"sepstream::damp_windows<{x}, {f}, {nt}>"


def library_table(
    lib_unit: npt.NDArray[np.float64], ft: Any, group: int = GROUP
) -> npt.NDArray[Any]:
    """(T+1, Lpad) transposed unit library, zero columns up to a multiple of
    ``group·LIB_BLOCK``, columns arranged as the kernel's lanes load them.

    In each superblock of ``group·LIB_BLOCK`` rows, group position j owns rows
    j·LIB_BLOCK .. (j+1)·LIB_BLOCK−1, read as 16-byte vectors (2 doubles or 4 floats); its
    vector i sits at vector slot i·group + j.  A zero column adds similarity 0, which cannot
    change ``clip(max cos, 0, 1)``.
    """
    n_lib, length = lib_unit.shape
    dt = np.dtype(ft)
    vec = 16 // dt.itemsize
    span = group * LIB_BLOCK
    lpad = -(-n_lib // span) * span
    rows = np.zeros((lpad, length), dtype=dt)
    rows[:n_lib] = lib_unit.astype(dt)
    # column c of superblock s holds row s·span + j·LIB_BLOCK + i·vec + e, c = (i·group+j)·vec+e
    s, i, j, e = np.meshgrid(
        np.arange(lpad // span),
        np.arange(LIB_BLOCK // vec),
        np.arange(group),
        np.arange(vec),
        indexing="ij",
    )
    col = s * span + (i * group + j) * vec + e
    row = s * span + j * LIB_BLOCK + i * vec + e
    table = np.empty((length, lpad), dtype=dt)
    table[:, col.ravel()] = rows[row.ravel()].T
    return table


@dataclass(frozen=True, slots=True)
class OutputLayout:
    """Where one chunk's outputs sit in one byte buffer (one device-to-host copy per chunk).

    ``floats``: (6, rows) of the float type at offset 0 (entropy, coherence, stability, lam,
    value, confidence); then int32 iterations and uint8 converged and collapse flags.
    """

    rows: int
    float_dtype: np.dtype[Any]
    iterations: int
    converged: int
    collapse: int
    nbytes: int

    def views(self, buf: Any) -> tuple[Any, Any, Any, Any]:
        """(floats (6, rows), iterations, converged, collapse) views of a uint8 buffer."""
        fsize = self.float_dtype.itemsize
        floats = buf[: 6 * self.rows * fsize].view(self.float_dtype).reshape(6, self.rows)
        iters = buf[self.iterations : self.iterations + 4 * self.rows].view(np.int32)
        conv = buf[self.converged : self.converged + self.rows]
        coll = buf[self.collapse : self.collapse + self.rows]
        return floats, iters, conv, coll


def output_layout(rows: int, ft: Any) -> OutputLayout:
    """The byte layout of ``rows`` rows of outputs in float type ``ft``."""
    dt = np.dtype(ft)
    it = 6 * rows * dt.itemsize
    conv = it + 4 * rows
    coll = conv + rows
    return OutputLayout(rows, dt, it, conv, coll, coll + rows)


def out_row_bytes(ft: Any) -> int:
    """Output bytes per window: six floats, an int32 and two flags."""
    return 6 * int(np.dtype(ft).itemsize) + 4 + 2


def plan_chunk_rows(
    n: int,
    w: int,
    *,
    x_itemsize: int,
    f_itemsize: int,
    free_bytes: int,
    requested: int | None = None,
) -> int:
    """Rows per chunk on the host path: ``requested`` or ``CHUNK_INPUT_BYTES`` of closes,
    capped so ``NBUF`` chunks' inputs and outputs fit in ``MEMORY_SHARE`` of the free device
    memory."""
    per_row = w * x_itemsize + 6 * f_itemsize + 4 + 2
    cap = int(free_bytes * MEMORY_SHARE) // (NBUF * per_row)
    if cap < 1:
        raise MemoryError(
            f"{free_bytes} free bytes on the device cannot hold {NBUF} rows of {per_row} bytes"
        )
    want = requested if requested is not None else max(BLOCK, CHUNK_INPUT_BYTES // (w * x_itemsize))
    return max(1, min(n, want, cap))


# --------------------------------------------------------------------------- cupy side


@cache
def _function(
    name: str, min_blocks: int = MIN_BLOCKS, horner: int = HORNER, group: int = GROUP
) -> Any:
    """Compile (NVRTC, cached on disk by cupy) and return one kernel instantiation."""
    import cupy

    module = cupy.RawModule(
        code=KERNEL_SOURCE,
        options=(
            "-std=c++17",
            f"-DSEPSTREAM_MIN_BLOCKS={min_blocks}",
            f"-DSEPSTREAM_HORNER={horner}",
            f"-DSEPSTREAM_GROUP={group}",
        ),
        name_expressions=(name,),
    )
    return module.get_function(name)


@cache
def _streams() -> list[Any]:
    """The host path's non-blocking streams, made once per process."""
    import cupy

    return [cupy.cuda.Stream(non_blocking=True) for _ in range(NBUF)]


@cache
def _pool() -> ThreadPoolExecutor:
    """Threads for the pinned-buffer copies (NumPy releases the GIL while it copies)."""
    return ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="damping-copy")


def _workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 4
    return max(1, min(16, cores))


def _parallel(jobs: Sequence[Callable[[], object]]) -> None:
    if len(jobs) == 1:
        jobs[0]()
        return
    for fut in [_pool().submit(job) for job in jobs]:
        fut.result()


def _slices(n: int, parts: int, grain: int = 4096) -> list[tuple[int, int]]:
    """Split ``range(n)`` into at most ``parts`` contiguous pieces of at least ``grain``."""
    parts = max(1, min(parts, n // grain))
    edges = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _copy_rows(dst: npt.NDArray[Any], src: npt.NDArray[Any]) -> None:
    """dst[...] = src (with a cast when the types differ), split across the copy threads."""
    jobs: list[Callable[[], object]] = []
    for a, b in _slices(src.shape[0], _workers()):

        def job(a: int = a, b: int = b) -> None:
            np.copyto(dst[a:b], src[a:b], casting="unsafe")

        jobs.append(job)
    _parallel(jobs)


def _launch(
    func: Any,
    closes: Any,
    rows: int,
    *,
    w: int,
    lib: Any,
    outs: tuple[Any, Any, Any, Any],
    ld: int,
    bad: Any,
) -> None:
    """One launch over ``rows`` rows on the current stream; outputs at the views given."""
    if rows == 0:
        return
    floats, iters, conv, coll = outs
    grid = -(-rows // BLOCK)
    func(
        (grid,),
        (BLOCK,),
        (
            closes,
            np.int64(rows),
            np.int32(w),
            lib,
            np.int32(lib.shape[1]),
            floats,
            np.int64(ld),
            iters,
            conv,
            coll,
            bad,
        ),
    )


def _wire_dtype(dtype: np.dtype[Any], transfer_dtype: Any) -> np.dtype[Any]:
    """The closes' type on the device: their own, float64 for integers, or the caller's."""
    wire: np.dtype[Any] = np.dtype(np.float64)
    if transfer_dtype is not None:
        wire = np.dtype(transfer_dtype)
        if wire not in _CTYPES:
            raise ValueError(f"transfer_dtype must be float32 or float64, got {transfer_dtype!r}")
    elif dtype in _CTYPES:
        wire = dtype
    return wire


def _check_bad(bad: Any) -> None:
    if int(bad.get()[0]):
        raise ValueError("closes contain non-finite values (NaN or inf)")


def _device_outputs(n: int, ft: Any) -> tuple[Any, Any, Any, Any]:
    import cupy

    return (
        cupy.empty((6, n), dtype=ft),
        cupy.empty(n, dtype=np.int32),
        cupy.empty(n, dtype=np.bool_),
        cupy.empty(n, dtype=np.bool_),
    )


def _as_dict(floats: Any, iters: Any, conv: Any, coll: Any) -> dict[str, Any]:
    out = {name: floats[k] for k, name in enumerate(OUT_FLOATS)}
    out.update(iterations=iters, converged=conv, collapse=coll)
    return out


def prepared_launch(
    closes: Any,
    lib_unit: npt.NDArray[np.float64],
    ft: Any,
    *,
    min_blocks: int = MIN_BLOCKS,
    horner: int = HORNER,
    group: int = GROUP,
) -> tuple[Callable[[], None], dict[str, Any]]:
    """For timing the kernel alone: a callable that launches it over all rows of device
    closes on the current stream, and the preallocated outputs it writes."""
    import cupy

    n, w = closes.shape
    func = _function(kernel_name(closes.dtype, ft, words_for(w)), min_blocks, horner, group)
    lib = cupy.asarray(library_table(lib_unit, ft, group))
    floats, iters, conv, coll = _device_outputs(n, ft)
    bad = cupy.zeros(1, dtype=np.int32)
    outs = (floats[0], iters, conv, coll)

    def launch() -> None:
        _launch(func, closes, n, w=w, lib=lib, outs=outs, ld=n, bad=bad)

    return launch, _as_dict(floats, iters, conv, coll)


def damp_device(
    closes: Any,
    lib_unit: npt.NDArray[np.float64],
    ft: Any,
    *,
    chunk_rows: int | None = None,
) -> dict[str, Any]:
    """Closes already on the device (a cupy array): outputs as cupy arrays, no host copies.

    Memory beyond the input: the outputs (54 bytes a window in float64) and the library.
    """
    import cupy

    n, w = closes.shape
    if closes.dtype not in _CTYPES:
        closes = closes.astype(np.float64)
    closes = cupy.ascontiguousarray(closes)
    func = _function(kernel_name(closes.dtype, ft, words_for(w)))
    lib = cupy.asarray(library_table(lib_unit, ft))
    floats, iters, conv, coll = _device_outputs(n, ft)
    bad = cupy.zeros(1, dtype=np.int32)
    step = n if chunk_rows is None else chunk_rows
    for start in range(0, n, max(1, step)):
        m = min(step, n - start)
        outs = (floats[0, start:], iters[start:], conv[start:], coll[start:])
        _launch(func, closes[start : start + m], m, w=w, lib=lib, outs=outs, ld=n, bad=bad)
    _check_bad(bad)
    return _as_dict(floats, iters, conv, coll)


def damp_host(
    closes: npt.NDArray[Any],
    lib_unit: npt.NDArray[np.float64],
    ft: Any,
    *,
    to_host: bool = True,
    transfer_dtype: Any = None,
    chunk_rows: int | None = None,
    pinned_results: bool | None = None,
    stats: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Host closes: chunks of rows through pinned buffers, two in flight on two streams.

    Each chunk is copied into a pinned buffer (by the copy threads) while the previous one
    is transferred and computed.  ``to_host``: results as NumPy arrays: up to
    ``PINNED_RESULT_BYTES`` of them in page-locked memory from cupy's pinned pool, which the
    device writes directly (nothing to copy, no page faults once the pool is warm); larger
    results in ordinary memory, each chunk's outputs copied there from a pinned buffer.
    ``pinned_results`` forces either.  Else the results are cupy arrays of length N, written
    in place by each chunk's launch.  ``stats``, if given, receives seconds per phase.
    """
    import cupy
    import cupyx

    clock = time.perf_counter
    t_start = clock()
    phase = dict.fromkeys(("setup", "stage", "wait", "copy_out", "enqueue"), 0.0)
    n, w = closes.shape
    wire = _wire_dtype(closes.dtype, transfer_dtype)
    fdt = np.dtype(ft)
    func = _function(kernel_name(wire, fdt, words_for(w)))
    lib = cupy.asarray(library_table(lib_unit, fdt))
    free, _total = cupy.cuda.runtime.memGetInfo()
    rows = plan_chunk_rows(
        n,
        w,
        x_itemsize=wire.itemsize,
        f_itemsize=fdt.itemsize,
        free_bytes=int(free),
        requested=chunk_rows,
    )
    nbuf = min(NBUF, -(-n // rows)) if n else 1
    layout = output_layout(rows, fdt)
    bad = cupy.zeros(1, dtype=np.int32)
    small = n * out_row_bytes(fdt) <= PINNED_RESULT_BYTES
    pinned_out = to_host and (small if pinned_results is None else pinned_results)

    streams = _streams()[:nbuf]
    dev_in = [cupy.empty((rows, w), dtype=wire) for _ in range(nbuf)]
    pin_in = [cupyx.empty_pinned((rows, w), dtype=wire) for _ in range(nbuf)]
    in_free = [cupy.cuda.Event(disable_timing=True) for _ in range(nbuf)]
    done = [cupy.cuda.Event(disable_timing=True) for _ in range(nbuf)]
    if to_host:
        dev_out = [cupy.empty(layout.nbytes, dtype=np.uint8) for _ in range(nbuf)]
        alloc = cupyx.empty_pinned if pinned_out else np.empty
        floats_h = alloc((6, n), dtype=fdt)
        iters_h = alloc(n, dtype=np.int32)
        conv_h = alloc(n, dtype=np.bool_)
        coll_h = alloc(n, dtype=np.bool_)
        if not pinned_out:
            pin_out = [cupyx.empty_pinned(layout.nbytes, dtype=np.uint8) for _ in range(nbuf)]
    else:
        floats_d, iters_d, conv_d, coll_d = _device_outputs(n, fdt)

    def copy_out(b: int, start: int, m: int) -> None:
        f, it, cv, cl = layout.views(pin_out[b])
        jobs: list[Callable[[], object]] = []
        for a, e in _slices(m, _workers()):

            def job(a: int = a, e: int = e) -> None:
                floats_h[:, start + a : start + e] = f[:, a:e]
                iters_h[start + a : start + e] = it[a:e]
                conv_h[start + a : start + e] = cv[a:e].view(np.bool_)
                coll_h[start + a : start + e] = cl[a:e].view(np.bool_)

            jobs.append(job)
        _parallel(jobs)

    def fetch(b: int, start: int, m: int, stream: Any) -> None:
        """Queue the device-to-host copies of a chunk's outputs on its stream."""
        rt = cupy.cuda.runtime
        if not pinned_out:
            rt.memcpyAsync(
                pin_out[b].ctypes.data, dev_out[b].data.ptr, layout.nbytes, d2h, stream.ptr
            )
            return
        fs = fdt.itemsize
        base = dev_out[b].data.ptr
        rt.memcpy2DAsync(
            floats_h.ctypes.data + start * fs, n * fs, base, rows * fs, m * fs, 6, d2h, stream.ptr
        )
        for host, off, size in (
            (iters_h, layout.iterations, 4),
            (conv_h, layout.converged, 1),
            (coll_h, layout.collapse, 1),
        ):
            rt.memcpyAsync(host.ctypes.data + start * size, base + off, m * size, d2h, stream.ptr)

    last: list[tuple[int, int] | None] = [None] * nbuf
    h2d = cupy.cuda.runtime.memcpyHostToDevice
    d2h = cupy.cuda.runtime.memcpyDeviceToHost
    row_bytes = w * wire.itemsize
    # The library upload and the zeroed flag were queued on the current stream, which the
    # non-blocking streams do not wait for.
    cupy.cuda.get_current_stream().synchronize()
    t = clock()
    phase["setup"] = t - t_start
    try:
        for ci, start in enumerate(range(0, n, rows)):
            b = ci % nbuf
            m = min(rows, n - start)
            prev = last[b]
            if prev is not None:
                in_free[b].synchronize()  # the transfer out of pin_in[b] has finished
            t, phase["wait"] = clock(), phase["wait"] + clock() - t
            _copy_rows(pin_in[b][:m], closes[start : start + m])
            t, phase["stage"] = clock(), phase["stage"] + clock() - t
            if prev is not None and to_host and not pinned_out:
                done[b].synchronize()
                t, phase["wait"] = clock(), phase["wait"] + clock() - t
                copy_out(b, *prev)
                t, phase["copy_out"] = clock(), phase["copy_out"] + clock() - t
            stream = streams[b]
            cupy.cuda.runtime.memcpyAsync(
                dev_in[b].data.ptr, pin_in[b].ctypes.data, m * row_bytes, h2d, stream.ptr
            )
            in_free[b].record(stream)
            with stream:
                if to_host:
                    f, it, cv, cl = layout.views(dev_out[b])
                    outs, ld = (f[0], it, cv, cl), rows
                else:
                    outs = (floats_d[0, start:], iters_d[start:], conv_d[start:], coll_d[start:])
                    ld = n
                _launch(func, dev_in[b], m, w=w, lib=lib, outs=outs, ld=ld, bad=bad)
            if to_host:
                fetch(b, start, m, stream)
            done[b].record(stream)
            last[b] = (start, m)
            t, phase["enqueue"] = clock(), phase["enqueue"] + clock() - t

        pending = sorted((p[0], b) for b, p in enumerate(last) if p is not None)
        for _start, b in pending:
            done[b].synchronize()
            t, phase["wait"] = clock(), phase["wait"] + clock() - t
            if to_host and not pinned_out:
                prev = last[b]
                assert prev is not None
                copy_out(b, *prev)
                t, phase["copy_out"] = clock(), phase["copy_out"] + clock() - t
    finally:
        # Nothing may still use the buffers when they go back to the pools.
        for stream in streams:
            stream.synchronize()
    _check_bad(bad)
    if stats is not None:
        phase["total"] = clock() - t_start
        phase["chunks"] = float(-(-n // rows)) if n else 0.0
        phase["chunk_rows"] = float(rows)
        phase["pinned_results"] = float(pinned_out)
        stats.update(phase)
    if to_host:
        return _as_dict(floats_h, iters_h, conv_h, coll_h)
    return _as_dict(floats_d, iters_d, conv_d, coll_d)
