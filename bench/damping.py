"""Benchmark of the bitspace damping kernel: windows/s per backend and batch size.

    python -m bench.damping --sizes 1e3,1e4,1e5,1e6 --backends numpy,cupy --repeat 5 --json

Each (backend, size) gets one untimed warm-up run, then ``--repeat`` timed runs; the figure
is the median.  The input is a batch of real-looking closes (GBM with jumps, 0.01 tick)
with W = 64 and a library of L = 64 random paths.  For cupy two figures are reported:
``transfer`` (host closes in, host results out, as ``damp`` is called in the pipeline) and
``device`` (closes already on the GPU, results left there, device synchronised before the
clock stops).  Peak memory is measured in a separate untimed run: NumPy allocations via
tracemalloc (the kernel's temporaries and outputs, not the input), the CuPy pool's bytes
for the device.  Logs go to stderr; ``--json`` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels.damping import available_backends, damp, damp_arrays

GEN_BLOCK = 100_000


def make_closes(n: int, w: int, seed: int) -> npt.NDArray[np.float64]:
    """GBM closes with Poisson jumps rounded to a 0.01 tick, generated in blocks."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, w), dtype=np.float64)
    for start in range(0, n, GEN_BLOCK):
        m = min(GEN_BLOCK, n - start)
        sigma = rng.uniform(0.0005, 0.02, size=(m, 1))
        rets = rng.normal(0.0, 0.001, size=(m, 1)) + sigma * rng.standard_normal((m, w))
        jumps = rng.random((m, w)) < 0.02
        rets += np.where(jumps, rng.normal(0.0, 0.05, size=(m, w)), 0.0)
        base = rng.uniform(1.0, 50_000.0, size=(m, 1))
        out[start : start + m] = np.round(base * np.exp(np.cumsum(rets, axis=1)), 2)
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
            "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
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


def bench_cupy(
    closes: npt.NDArray[np.float64], lib: npt.NDArray[np.float64], dtype: str, repeat: int
) -> dict[str, Any]:
    import cupy

    pool = cupy.get_default_memory_pool()

    def with_transfer() -> object:
        return damp(closes, lib, backend="cupy", dtype=dtype)  # results come back as numpy

    med_t, times_t = _median_time(with_transfer, repeat)
    med_d, times_d = _device_resident_time(closes, lib, dtype, repeat)
    pool.free_all_blocks()
    with_transfer()
    peak = int(pool.total_bytes())
    result = damp(closes, lib, backend="cupy", dtype=dtype)
    n = closes.shape[0]
    return {
        "seconds_median": med_t,
        "seconds_all": times_t,
        "windows_per_s": n / med_t,
        "device_seconds_median": med_d,
        "device_seconds_all": times_d,
        "device_windows_per_s": n / med_d,
        "device_pool_bytes": peak,
        "mean_iterations": float(result.iterations.mean()),
        "converged_share": float(result.converged.mean()),
    }


def _device_resident_time(
    closes: npt.NDArray[np.float64], lib: npt.NDArray[np.float64], dtype: str, repeat: int
) -> tuple[float, list[float]]:
    """Closes already on the GPU, results left there; the clock stops after a device sync."""
    import cupy

    closes_dev = cupy.asarray(closes)
    lib_dev = cupy.asarray(lib)

    def on_device() -> object:
        out = damp_arrays(closes_dev, lib_dev, backend="cupy", dtype=dtype)
        cupy.cuda.Device().synchronize()
        return out

    return _median_time(on_device, repeat)


def _parse_sizes(text: str) -> list[int]:
    sizes = [int(float(x)) for x in text.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive, e.g. 1e3,1e4")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.damping", description=__doc__)
    parser.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes("1e3,1e4,1e5,1e6"))
    parser.add_argument("--backends", default="numpy,cupy", help="comma list: numpy,cupy")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--library-size", type=int, default=64)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.window < 3 or args.library_size < 1:
        parser.error("--repeat >= 1, --window >= 3 and --library-size >= 1 are required")

    usable = available_backends()
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    skipped = [b for b in wanted if b not in usable]
    for b in skipped:
        print(f"skipping backend {b!r}: not usable here (usable: {usable})", file=sys.stderr)
    backends = [b for b in wanted if b in usable]

    lib = np.random.default_rng(args.seed + 1).normal(size=(args.library_size, args.window - 1))
    all_closes = make_closes(max(args.sizes), args.window, args.seed)
    runs: list[dict[str, Any]] = []
    for n in args.sizes:
        closes = all_closes[:n]
        for backend in backends:
            fn = bench_numpy if backend == "numpy" else bench_cupy
            row = {"backend": backend, "n": n} | fn(closes, lib, args.dtype, args.repeat)
            runs.append(row)
            print(
                f"{backend:>5} N={n:>9,}  {row['windows_per_s']:>14,.0f} windows/s"
                + (
                    f"  (device-resident {row['device_windows_per_s']:,.0f}/s)"
                    if "device_windows_per_s" in row
                    else ""
                ),
                file=sys.stderr,
            )

    speedups = []
    for n in args.sizes:
        by = {r["backend"]: r for r in runs if r["n"] == n}
        if {"numpy", "cupy"} <= by.keys():
            base = by["numpy"]["windows_per_s"]
            speedups.append(
                {
                    "n": n,
                    "cupy_vs_numpy": by["cupy"]["windows_per_s"] / base,
                    "cupy_device_vs_numpy": by["cupy"]["device_windows_per_s"] / base,
                }
            )
    doc = {
        "benchmark": "kernels.damping",
        "window": args.window,
        "library_size": args.library_size,
        "dtype": args.dtype,
        "repeat": args.repeat,
        "statistic": "median of repeats after one warm-up",
        "machine": machine_info(),
        "skipped_backends": skipped,
        "runs": runs,
        "speedups": speedups,
        "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_table(doc)
    return 0


def _print_table(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    gpu = m["gpu"]["name"] if m["gpu"] else "none"
    print(
        f"CPU {m['cpu']} ({m['cores']} cores), GPU {gpu}; W={doc['window']} L={doc['library_size']}"
    )
    print(f"{'backend':<8}{'N':>10}{'windows/s':>16}{'device w/s':>16}{'peak MiB':>10}{'iters':>7}")
    for r in doc["runs"]:
        dev = f"{r['device_windows_per_s']:,.0f}" if "device_windows_per_s" in r else "-"
        peak = r.get("peak_alloc_bytes", r.get("device_pool_bytes", 0)) / 2**20
        print(
            f"{r['backend']:<8}{r['n']:>10,}{r['windows_per_s']:>16,.0f}{dev:>16}"
            f"{peak:>10,.0f}{r['mean_iterations']:>7.2f}"
        )
    for s in doc["speedups"]:
        print(
            f"N={s['n']:,}: cupy {s['cupy_vs_numpy']:.1f}x, device {s['cupy_device_vs_numpy']:.1f}x"
        )


if __name__ == "__main__":
    raise SystemExit(main())
