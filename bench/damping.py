"""Benchmark of the bitspace damping kernel: windows/s per backend, batch size and dtype.

    python -m bench.damping --sizes 1e3,1e4,1e5,1e6 --backends numpy,cupy --repeat 5 --json

Each measurement gets one untimed warm-up run, then ``--repeat`` timed runs; the figure is
the median.  The input is a batch of real-looking closes (GBM with jumps, 0.01 tick) with
W = 64 and a library of L = 64 random paths; batches larger than ``--unique-rows`` repeat
the generated rows (a 512 MiB block of float64 closes is far beyond any cache, so the
repetition cannot flatter a timing).

NumPy: windows/s, the kernel's peak allocations (tracemalloc; the input not counted).

CuPy (the fused kernel, ``method="kernel"``), per size and dtype:

* ``kernel``: the kernel alone over device-resident closes into preallocated outputs,
  timed with CUDA events; with the bytes it must move (closes in, outputs out) per second
  against the device's copy bandwidth (``--probe`` measures it; else the H200's nominal
  4.8 TB/s);
* ``device``: ``damp_arrays`` on device-resident closes (library upload, output
  allocation and the non-finite check included), host clock after a device sync;
* ``host``: ``damp`` with NumPy closes in and NumPy results out (pinned chunks, two
  streams), host clock; the bytes crossing PCIe per second against the pinned copy rates;
  ``host_f32wire``: the same with ``transfer_dtype="float32"``;
* peak device memory: the CuPy pool's bytes after one run from an empty pool, for the
  device path (outputs) and the host path (two chunks' buffers, also as a multiple of one
  chunk's closes).

``--variants`` times the kernel alone for compile-time variants (``H<horner>MB<min
blocks>G<group>``) at the largest size in float64; ``--chunk-mib`` sweeps the host path's chunk
size there; ``--parity`` compares the device with NumPy on ``--parity-rows`` rows.  Logs go
to stderr; ``--json`` prints one JSON document on stdout, ``--json-out`` writes it to a file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels import damping_gpu
from kernels.damping import _library_unit, available_backends, damp, damp_arrays

GEN_BLOCK = 100_000
NOMINAL_DEVICE_BYTES_PER_S = 4.8e12  # H200 HBM3e, vendor datasheet


def make_closes(n: int, w: int, seed: int, unique: int | None = None) -> npt.NDArray[np.float64]:
    """GBM closes with Poisson jumps rounded to a 0.01 tick, generated in blocks; rows past
    ``unique`` repeat the first ``unique`` rows."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, w), dtype=np.float64)
    fresh = n if unique is None else min(n, unique)
    for start in range(0, fresh, GEN_BLOCK):
        m = min(GEN_BLOCK, fresh - start)
        sigma = rng.uniform(0.0005, 0.02, size=(m, 1))
        rets = rng.normal(0.0, 0.001, size=(m, 1)) + sigma * rng.standard_normal((m, w))
        jumps = rng.random((m, w)) < 0.02
        rets += np.where(jumps, rng.normal(0.0, 0.05, size=(m, w)), 0.0)
        base = rng.uniform(1.0, 50_000.0, size=(m, 1))
        out[start : start + m] = np.round(base * np.exp(np.cumsum(rets, axis=1)), 2)
    for start in range(fresh, n, fresh):
        m = min(fresh, n - start)
        out[start : start + m] = out[:m]
    return out


def machine_info() -> dict[str, Any]:
    """CPU model and cores, plus the GPU when cupy can see one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "backends": list(available_backends()),
        "gpu": None,
    }
    if "cupy" in info["backends"]:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        info["gpu"] = {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "multiprocessors": props["multiProcessorCount"],
            "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
        }
    return info


def _median_time(fn: Callable[[], object], repeat: int) -> tuple[float, list[float]]:
    fn()  # warm-up: kernel compilation, memory pools, page faults
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _event_time(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``fn``'s device work on the current stream, by CUDA events."""
    import cupy

    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(float(cupy.cuda.get_elapsed_time(start, end)) / 1e3)
    return statistics.median(times)


def _numpy_peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_numpy(
    closes: npt.NDArray[np.float64], lib: npt.NDArray[np.float64], dtype: str, repeat: int
) -> dict[str, Any]:
    def run() -> object:
        return damp(closes, lib, backend="numpy", dtype=dtype)

    med, times = _median_time(run, repeat)
    result = damp(closes, lib, backend="numpy", dtype=dtype)
    return {
        "seconds_median": med,
        "seconds_all": times,
        "windows_per_s": closes.shape[0] / med,
        "peak_alloc_bytes": _numpy_peak_bytes(run),
        "mean_iterations": float(result.iterations.mean()),
        "converged_share": float(result.converged.mean()),
    }


def _pool_bytes_after(fn: Callable[[], object]) -> int:
    """Bytes the CuPy pool grew by in one run from an empty pool (arrays already alive not
    counted): that run's peak device memory, as the pool keeps freed blocks."""
    import cupy

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    base = int(pool.used_bytes())
    held = fn()
    total = int(pool.total_bytes()) - base
    del held
    return total


def bench_cupy(
    closes: npt.NDArray[np.float64],
    lib: npt.NDArray[np.float64],
    dtype: str,
    repeat: int,
    *,
    device_bw: float,
    h2d_bw: float | None,
) -> dict[str, Any]:
    import cupy

    n, w = closes.shape
    ft = np.dtype(dtype)
    unit = _library_unit(lib, w - 2)
    out_bytes = n * damping_gpu.out_row_bytes(ft)
    row: dict[str, Any] = {}

    closes_dev = cupy.asarray(closes)
    launch, outs = damping_gpu.prepared_launch(closes_dev, unit, ft)
    k_sec = _event_time(launch, repeat)
    moved = closes.nbytes + out_bytes
    row |= {
        "kernel_seconds": k_sec,
        "kernel_windows_per_s": n / k_sec,
        "kernel_bytes_per_s": moved / k_sec,
        "kernel_bandwidth_share": moved / k_sec / device_bw,
        "mean_iterations": float(outs["iterations"].mean()),
        "warp_max_iterations_mean": float(
            outs["iterations"][: n // 32 * 32].reshape(-1, 32).max(axis=1).mean()
        )
        if n >= 32
        else None,
    }
    del launch, outs
    if ft == np.float32:  # closes stored as float32 on the device too
        c32 = closes_dev.astype(np.float32)
        launch32, _ = damping_gpu.prepared_launch(c32, unit, ft)
        k32 = _event_time(launch32, repeat)
        row |= {"kernel_f32closes_windows_per_s": n / k32}
        del launch32, c32

    def on_device() -> object:
        out = damp_arrays(closes_dev, lib, backend="cupy", dtype=dtype)
        cupy.cuda.Device().synchronize()
        return out

    d_med, _ = _median_time(on_device, repeat)
    row |= {"device_windows_per_s": n / d_med, "device_peak_bytes": _pool_bytes_after(on_device)}

    def host(transfer: str | None = None, chunk_rows: int | None = None) -> object:
        return damp(
            closes, lib, backend="cupy", dtype=dtype, transfer_dtype=transfer, chunk_rows=chunk_rows
        )

    h_med, h_all = _median_time(host, repeat)
    pcie = closes.nbytes + out_bytes
    rows = damping_gpu.plan_chunk_rows(
        n, w, x_itemsize=8, f_itemsize=ft.itemsize, free_bytes=_free_bytes()
    )
    host_peak = _pool_bytes_after(host)
    row |= {
        "host_seconds": h_med,
        "host_seconds_all": h_all,
        "host_windows_per_s": n / h_med,
        "host_pcie_bytes_per_s": pcie / h_med,
        "host_pcie_share": pcie / h_med / h2d_bw if h2d_bw else None,
        "host_chunk_rows": rows,
        "host_peak_bytes": host_peak,
        "host_peak_over_chunk_input": host_peak / (rows * w * 8),
    }
    f_med, _ = _median_time(lambda: host("float32"), repeat)
    row |= {"host_f32wire_windows_per_s": n / f_med}

    def host_mode(pinned: bool, transfer: str | None = None) -> dict[str, Any]:
        def run() -> object:
            return damping_gpu.damp_host(
                closes, unit, ft, pinned_results=pinned, transfer_dtype=transfer
            )

        med, _ = _median_time(run, repeat)
        stats: dict[str, float] = {}
        damping_gpu.damp_host(
            closes, unit, ft, pinned_results=pinned, transfer_dtype=transfer, stats=stats
        )
        return {"windows_per_s": n / med, "phases": stats}

    row |= {
        "host_pinned": host_mode(True),
        "host_pinned_f32wire": host_mode(True, "float32"),
        "host_pageable": host_mode(False),
    }
    return row


def _free_bytes() -> int:
    import cupy

    return int(cupy.cuda.runtime.memGetInfo()[0])


def probe_bandwidths(repeat: int, nbytes: int = 1 << 31) -> dict[str, float]:
    """Device copy, pinned host<->device copies, host memcpy into pinned memory (1 thread,
    and a pool), and page-locking ordinary memory in place (register + unregister)."""
    import cupy
    import cupyx

    rt = cupy.cuda.runtime
    a = cupy.empty(nbytes // 8, dtype=np.float64)
    a.fill(1.0)
    b = cupy.empty_like(a)
    d2d = _event_time(lambda: b.__setitem__(slice(None), a), repeat)
    pinned = cupyx.empty_pinned(nbytes // 8, dtype=np.float64)
    pinned[:] = 1.0
    stream = cupy.cuda.Stream(non_blocking=True)

    def h2d() -> None:
        rt.memcpyAsync(a.data.ptr, pinned.ctypes.data, nbytes, rt.memcpyHostToDevice, stream.ptr)
        stream.synchronize()

    def d2h() -> None:
        rt.memcpyAsync(pinned.ctypes.data, a.data.ptr, nbytes, rt.memcpyDeviceToHost, stream.ptr)
        stream.synchronize()

    h2d_s, _ = _median_time(h2d, repeat)
    d2h_s, _ = _median_time(d2h, repeat)
    src = np.ones(nbytes // 8)
    one_s, _ = _median_time(lambda: np.copyto(pinned, src), repeat)

    def register() -> None:
        rt.hostRegister(src.ctypes.data, src.nbytes, 0)
        rt.hostUnregister(src.ctypes.data)

    reg_s, _ = _median_time(register, repeat)
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 4

    with ThreadPoolExecutor(workers) as ex:

        def pooled() -> None:
            k = src.shape[0]
            edges = [k * i // workers for i in range(workers + 1)]
            futs = [
                ex.submit(np.copyto, pinned[x:y], src[x:y]) for x, y in itertools.pairwise(edges)
            ]
            for f in futs:
                f.result()

        pool_s, _ = _median_time(pooled, repeat)
    return {
        "device_copy_bytes_per_s": 2 * nbytes / d2d,  # read + write
        "h2d_pinned_bytes_per_s": nbytes / h2d_s,
        "d2h_pinned_bytes_per_s": nbytes / d2h_s,
        "host_memcpy_1thread_bytes_per_s": nbytes / one_s,
        "host_memcpy_pool_bytes_per_s": nbytes / pool_s,
        "host_memcpy_pool_threads": workers,
        "host_register_unregister_bytes_per_s": nbytes / reg_s,
    }


def bench_variants(
    closes: npt.NDArray[np.float64], lib: npt.NDArray[np.float64], names: list[str], repeat: int
) -> list[dict[str, Any]]:
    """The kernel alone (float64) per compile-time variant ``H<horner>MB<min blocks>G<group>``."""
    import cupy

    n, w = closes.shape
    unit = _library_unit(lib, w - 2)
    closes_dev = cupy.asarray(closes)
    rows = []
    for name in names:
        m = re.fullmatch(r"H(\d)MB(\d)G(\d)", name)
        if m is None:
            raise ValueError(f"variant {name!r} is not H<horner>MB<min blocks>G<group>")
        horner, min_blocks, group = (int(x) for x in m.groups())
        launch, _ = damping_gpu.prepared_launch(
            closes_dev, unit, np.float64, min_blocks=min_blocks, horner=horner, group=group
        )
        sec = _event_time(launch, repeat)
        func = damping_gpu._function(
            damping_gpu.kernel_name(np.float64, np.float64, damping_gpu.words_for(w)),
            min_blocks,
            horner,
            group,
        )
        attrs = {k: getattr(func, k, None) for k in ("num_regs", "local_size_bytes")}
        rows.append({"variant": name, "n": n, "kernel_windows_per_s": n / sec} | attrs)
        print(f"variant {name}: {n / sec:,.0f} windows/s {attrs}", file=sys.stderr)
    return rows


def bench_chunks(
    closes: npt.NDArray[np.float64], lib: npt.NDArray[np.float64], mibs: list[int], repeat: int
) -> list[dict[str, Any]]:
    """Host path (float64) per chunk size in MiB of closes, pinned and pageable results."""
    n, w = closes.shape
    unit = _library_unit(lib, w - 2)
    out = []
    for pinned in (True, False):
        for mib in mibs:
            chunk = max(1, (mib << 20) // (w * 8))

            def run(rows: int = chunk, pin: bool = pinned) -> object:
                return damping_gpu.damp_host(
                    closes, unit, np.float64, chunk_rows=rows, pinned_results=pin
                )

            med, _ = _median_time(run, repeat)
            stats: dict[str, float] = {}
            damping_gpu.damp_host(
                closes, unit, np.float64, chunk_rows=chunk, pinned_results=pinned, stats=stats
            )
            out.append(
                {
                    "pinned_results": pinned,
                    "chunk_mib": mib,
                    "chunk_rows": chunk,
                    "host_windows_per_s": n / med,
                    "phases": stats,
                }
            )
            print(
                f"pinned={pinned} chunk {mib} MiB: {n / med:,.0f} windows/s host to host {stats}",
                file=sys.stderr,
            )
    return out


def parity(closes: npt.NDArray[np.float64], lib: npt.NDArray[np.float64]) -> list[dict[str, Any]]:
    """Device vs the NumPy reference on the same rows, per dtype (and float32 transfer)."""
    out = []
    for dtype, transfer in (("float64", None), ("float32", None), ("float32", "float32")):
        ref = damp(closes, lib, backend="numpy", dtype=dtype)
        got = damp(closes, lib, backend="cupy", dtype=dtype, transfer_dtype=transfer)
        fields = damping_gpu.OUT_FLOATS
        diff = {f: float(np.abs(getattr(got, f) - getattr(ref, f)).max()) for f in fields}
        it = np.abs(got.iterations.astype(np.int64) - ref.iterations)
        out.append(
            {
                "dtype": dtype,
                "transfer_dtype": transfer,
                "rows": closes.shape[0],
                "max_abs_diff": diff,
                "max_abs_diff_all": max(diff.values()),
                "iterations_differing": int((it > 0).sum()),
                "iterations_max_diff": int(it.max()),
                "converged_differing": int((got.converged != ref.converged).sum()),
                "collapse_differing": int((got.collapse != ref.collapse).sum()),
            }
        )
        print(
            f"parity {dtype}/{transfer}: {out[-1]['max_abs_diff_all']:.2e}, "
            f"iterations differing {out[-1]['iterations_differing']}",
            file=sys.stderr,
        )
    return out


def _parse_sizes(text: str) -> list[int]:
    sizes = [int(float(x)) for x in text.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive, e.g. 1e3,1e4")
    return sizes


def _parse_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.damping", description=__doc__)
    parser.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes("1e3,1e4,1e5,1e6"))
    parser.add_argument("--backends", default="numpy,cupy", help="comma list: numpy,cupy")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--library-size", type=int, default=64)
    parser.add_argument(
        "--dtypes", type=_parse_list, default=["float64"], help="comma list of float64,float32"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unique-rows", type=lambda x: int(float(x)), default=1_000_000)
    parser.add_argument(
        "--variants",
        type=_parse_list,
        default=[],
        help="kernel variants H<0|1>MB<n>G<1|2|4> at the largest size (cupy)",
    )
    parser.add_argument(
        "--chunk-mib",
        type=lambda t: [int(x) for x in _parse_list(t)],
        default=[],
        help="host-path chunk sizes to sweep (cupy)",
    )
    parser.add_argument("--probe", action="store_true", help="measure copy bandwidths (cupy)")
    parser.add_argument("--parity-rows", type=lambda x: int(float(x)), default=0)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--json-out", default=None, help="write the JSON document here")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.window < 3 or args.library_size < 1:
        parser.error("--repeat >= 1, --window >= 3 and --library-size >= 1 are required")
    if any(d not in ("float64", "float32") for d in args.dtypes):
        parser.error("--dtypes takes float64 and/or float32")

    usable = available_backends()
    wanted = _parse_list(args.backends)
    skipped = [b for b in wanted if b not in usable]
    for b in skipped:
        print(f"skipping backend {b!r}: not usable here (usable: {usable})", file=sys.stderr)
    backends = [b for b in wanted if b in usable]

    lib = np.random.default_rng(args.seed + 1).normal(size=(args.library_size, args.window - 1))
    t0 = time.perf_counter()
    all_closes = make_closes(max(args.sizes), args.window, args.seed, args.unique_rows)
    print(f"generated {all_closes.shape} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    doc: dict[str, Any] = {
        "benchmark": "kernels.damping",
        "window": args.window,
        "library_size": args.library_size,
        "dtypes": args.dtypes,
        "repeat": args.repeat,
        "statistic": "median of repeats after one warm-up",
        "unique_rows": args.unique_rows,
        "machine": machine_info(),
        "skipped_backends": skipped,
        "runs": [],
    }
    device_bw, h2d_bw = NOMINAL_DEVICE_BYTES_PER_S, None
    if "cupy" in backends:
        doc["kernel_defaults"] = {
            "min_blocks": damping_gpu.MIN_BLOCKS,
            "horner": damping_gpu.HORNER,
            "group": damping_gpu.GROUP,
            "block": damping_gpu.BLOCK,
            "pinned_result_bytes": damping_gpu.PINNED_RESULT_BYTES,
            "chunk_input_bytes": damping_gpu.CHUNK_INPUT_BYTES,
        }
        if args.probe:
            doc["probe"] = probe_bandwidths(args.repeat)
            device_bw = doc["probe"]["device_copy_bytes_per_s"]
            h2d_bw = doc["probe"]["h2d_pinned_bytes_per_s"]
            print(f"probe: {doc['probe']}", file=sys.stderr)
        doc["device_bandwidth_reference"] = device_bw
        if args.parity_rows:
            doc["parity"] = parity(all_closes[: args.parity_rows], lib)
    for n in args.sizes:
        closes = all_closes[:n]
        for dtype in args.dtypes:
            for backend in backends:
                if backend == "numpy":
                    result = bench_numpy(closes, lib, dtype, args.repeat)
                else:
                    result = bench_cupy(
                        closes, lib, dtype, args.repeat, device_bw=device_bw, h2d_bw=h2d_bw
                    )
                row = {"backend": backend, "n": n, "dtype": dtype} | result
                doc["runs"].append(row)
                print(_line(row), file=sys.stderr)
    if "cupy" in backends and (args.variants or args.chunk_mib):
        big = all_closes[: max(args.sizes)]
        doc["variants"] = bench_variants(big, lib, args.variants, args.repeat)
        doc["chunks"] = bench_chunks(big, lib, args.chunk_mib, args.repeat)
    doc["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    text = json.dumps(doc, indent=2)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            fh.write(text)
    if args.json:
        print(text)
    else:
        _print_table(doc)
    return 0


def _line(r: dict[str, Any]) -> str:
    head = f"{r['backend']:>5} {r['dtype']} N={r['n']:>9,}"
    if r["backend"] == "numpy":
        return f"{head}  {r['windows_per_s']:>14,.0f} windows/s"
    return (
        f"{head}  kernel {r['kernel_windows_per_s']:,.0f}/s, device call "
        f"{r['device_windows_per_s']:,.0f}/s, host {r['host_windows_per_s']:,.0f}/s "
        f"(f32 wire {r['host_f32wire_windows_per_s']:,.0f}/s)"
    )


def _print_table(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    gpu = m["gpu"]["name"] if m["gpu"] else "none"
    print(
        f"CPU {m['cpu']} ({m['cores']} cores), GPU {gpu}; W={doc['window']} L={doc['library_size']}"
    )
    if "probe" in doc:
        p = doc["probe"]
        print(
            f"device copy {p['device_copy_bytes_per_s'] / 1e12:.2f} TB/s, pinned H2D "
            f"{p['h2d_pinned_bytes_per_s'] / 1e9:.1f} GB/s, D2H "
            f"{p['d2h_pinned_bytes_per_s'] / 1e9:.1f} GB/s, host memcpy "
            f"{p['host_memcpy_1thread_bytes_per_s'] / 1e9:.1f} GB/s (1 thread) / "
            f"{p['host_memcpy_pool_bytes_per_s'] / 1e9:.1f} GB/s "
            f"({p['host_memcpy_pool_threads']} threads)"
        )
    for p in doc.get("parity", []):
        print(
            f"parity {p['dtype']} (transfer {p['transfer_dtype']}), {p['rows']:,} rows: max |diff| "
            f"{p['max_abs_diff_all']:.1e}, iterations differing {p['iterations_differing']} "
            f"(max {p['iterations_max_diff']}), collapse differing {p['collapse_differing']}"
        )
    print(
        f"{'backend':<7}{'dtype':>8}{'N':>10}{'kernel w/s':>15}{'GB/s':>8}{'%bw':>6}"
        f"{'device w/s':>15}{'host w/s':>14}{'f32wire w/s':>14}{'dev MiB':>9}{'host MiB':>9}"
        f"{'x chunk':>8}{'iters':>7}"
    )
    for r in doc["runs"]:
        if r["backend"] == "numpy":
            print(
                f"{'numpy':<7}{r['dtype']:>8}{r['n']:>10,}{'-':>15}{'-':>8}{'-':>6}{'-':>15}"
                f"{r['windows_per_s']:>14,.0f}{'-':>14}{'-':>9}"
                f"{r['peak_alloc_bytes'] / 2**20:>9,.0f}{'-':>8}{r['mean_iterations']:>7.2f}"
            )
            continue
        print(
            f"{'cupy':<7}{r['dtype']:>8}{r['n']:>10,}{r['kernel_windows_per_s']:>15,.0f}"
            f"{r['kernel_bytes_per_s'] / 1e9:>8,.0f}{100 * r['kernel_bandwidth_share']:>6.1f}"
            f"{r['device_windows_per_s']:>15,.0f}{r['host_windows_per_s']:>14,.0f}"
            f"{r['host_f32wire_windows_per_s']:>14,.0f}{r['device_peak_bytes'] / 2**20:>9,.0f}"
            f"{r['host_peak_bytes'] / 2**20:>9,.0f}{r['host_peak_over_chunk_input']:>8.2f}"
            f"{r['mean_iterations']:>7.2f}"
        )
    for v in doc.get("variants", []):
        print(f"variant {v['variant']}: kernel {v['kernel_windows_per_s']:,.0f} windows/s")
    for c in doc.get("chunks", []):
        print(
            f"pinned results {c['pinned_results']}, chunk {c['chunk_mib']} MiB: host "
            f"{c['host_windows_per_s']:,.0f} windows/s"
        )
    for r in doc["runs"]:
        if r["backend"] == "cupy":
            print(
                f"{r['dtype']} N={r['n']:,}: host, pinned results "
                f"{r['host_pinned']['windows_per_s']:,.0f}/s (f32 wire "
                f"{r['host_pinned_f32wire']['windows_per_s']:,.0f}/s), pageable results "
                f"{r['host_pageable']['windows_per_s']:,.0f}/s"
            )


if __name__ == "__main__":
    raise SystemExit(main())
