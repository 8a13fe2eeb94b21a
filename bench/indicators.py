"""Benchmark of the incremental indicators: instrument-bar updates/s, ours vs talipp vs TA-Lib.

    python -m bench.indicators --instruments 1000 --bars 2000 --repeat 5 --json

One "update" = one instrument's new closed bar folded into ALL its indicators (SMA 20/50,
EMA 9/21, RSI 14, MACD 12/26/9, Bollinger 20/2, ATR 14, VWAP; ours also computes trend and
the volatility regime). Engines:

* ``sepstream_batch``: one :class:`kernels.indicators.IndicatorState`, one ``update`` call
  per bar for all instruments (how bars that close together are processed);
* ``sepstream_single``: the same state, one ``update`` call per instrument and bar (the
  per-record worst case: the agent could not batch);
* ``sepstream_series``: ``update_series`` once per instrument over all its bars (replay /
  backfill: many bars of one instrument in one call; same values bit for bit);
* ``talipp``: talipp's incremental indicator objects, one set per instrument;
* ``talib_recompute``: TA-Lib run per instrument and bar over the last ``--window`` bars
  (the stateless way: recompute from the history buffer, keep the last value).

The per-instrument engines cost the same per update whatever N is, so they are timed on
``--ref-instruments`` instruments (``--single-instruments`` for sepstream_single), all bars,
to keep the run short; their rate is what N instruments would see. Each engine gets one
untimed warm-up run, then ``--repeat`` timed runs; figures are medians. Logs go to stderr;
``--json`` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels.indicators import IndicatorState

F64 = npt.NDArray[np.float64]
MINUTE_NS = 60 * 1_000_000_000
T0_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00Z


@dataclass(frozen=True)
class Bars:
    """OHLCV as (bars, instruments) C-order matrices, so one bar of all instruments is a row."""

    ts: npt.NDArray[np.int64]
    o: F64
    h: F64
    low: F64
    c: F64
    v: F64


def make_bars(n_inst: int, n_bars: int, seed: int) -> Bars:
    """GBM bars with per-instrument volatility and price level (1 .. 50,000), 1-minute apart."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.001, 0.02, size=(1, n_inst))
    level = np.exp(rng.uniform(0.0, np.log(50_000.0), size=(1, n_inst)))
    c = level * np.exp(np.cumsum(sigma * rng.standard_normal((n_bars, n_inst)), axis=0))
    o = np.vstack([level, c[:-1]])
    wick = np.abs(rng.normal(0.0, 0.5, size=(2, n_bars, n_inst))) * sigma
    h = np.maximum(o, c) * (1.0 + wick[0])
    low = np.minimum(o, c) * (1.0 - wick[1])
    v = rng.gamma(2.0, 50.0, size=(n_bars, n_inst))
    ts = T0_NS + MINUTE_NS * np.arange(n_bars, dtype=np.int64)
    return Bars(ts, o, h, low, c, v)


def run_batch(bars: Bars) -> int:
    """All instruments in one state, one update per bar."""
    n_bars, n_inst = bars.c.shape
    state = IndicatorState(capacity=n_inst)
    idx = state.add_instruments(n_inst)
    for b in range(n_bars):
        state.update(idx, bars.ts[b], bars.o[b], bars.h[b], bars.low[b], bars.c[b], bars.v[b])
    return int(n_bars * n_inst)


def run_single(bars: Bars, subset: npt.NDArray[np.intp]) -> int:
    """One update call per instrument and bar (k = 1)."""
    n_bars = bars.c.shape[0]
    state = IndicatorState(capacity=subset.size)
    slots = state.add_instruments(subset.size)
    for b in range(n_bars):
        ts = int(bars.ts[b])
        for slot, i in zip(slots, subset, strict=True):
            state.update(
                slot, ts, bars.o[b, i], bars.h[b, i], bars.low[b, i], bars.c[b, i], bars.v[b, i]
            )
    return int(n_bars * subset.size)


def run_series(bars: Bars, subset: npt.NDArray[np.intp]) -> int:
    """One update_series call per instrument over its whole history."""
    n_bars = bars.c.shape[0]
    state = IndicatorState(capacity=subset.size)
    slots = state.add_instruments(subset.size)
    cols = [
        tuple(np.ascontiguousarray(x[:, i]) for x in (bars.o, bars.h, bars.low, bars.c, bars.v))
        for i in subset
    ]
    for slot, (o, h, low, c, v) in zip(slots, cols, strict=True):
        state.update_series(int(slot), bars.ts, o, h, low, c, v)
    return int(n_bars * subset.size)


def run_talipp(bars: Bars, subset: npt.NDArray[np.intp]) -> int:
    """talipp objects per instrument, fed bar by bar in the same interleaved order."""
    from talipp.indicators import ATR, BB, EMA, MACD, RSI, SMA, VWAP
    from talipp.ohlcv import OHLCV

    n_bars = bars.c.shape[0]
    sets = []
    for _ in subset:
        close_based = [SMA(20), SMA(50), EMA(9), EMA(21), RSI(14), MACD(12, 26, 9), BB(20, 2.0)]
        sets.append((close_based, ATR(14), VWAP()))
    cols = [
        (bars.o[:, i], bars.h[:, i], bars.low[:, i], bars.c[:, i], bars.v[:, i]) for i in subset
    ]
    py_cols = [[col.tolist() for col in inst] for inst in cols]
    for b in range(n_bars):
        for (close_based, atr, vwap), (o, h, low, c, v) in zip(sets, py_cols, strict=True):
            bar = OHLCV(o[b], h[b], low[b], c[b], v[b])
            for ind in close_based:
                ind.add(c[b])
            atr.add(bar)
            vwap.add(bar)
    return int(n_bars * subset.size)


def run_talib(bars: Bars, subset: npt.NDArray[np.intp], window: int) -> int:
    """TA-Lib over the last ``window`` bars of each instrument, every bar."""
    import talib

    n_bars = bars.c.shape[0]
    cols = [
        tuple(np.ascontiguousarray(x[:, i]) for x in (bars.h, bars.low, bars.c, bars.v))
        for i in subset
    ]
    for b in range(n_bars):
        lo_b = max(0, b + 1 - window)
        for h_all, l_all, c_all, v_all in cols:
            h, low, c, v = (
                h_all[lo_b : b + 1],
                l_all[lo_b : b + 1],
                c_all[lo_b : b + 1],
                v_all[lo_b : b + 1],
            )
            talib.SMA(c, 20)[-1]
            talib.SMA(c, 50)[-1]
            talib.EMA(c, 9)[-1]
            talib.EMA(c, 21)[-1]
            talib.RSI(c, 14)[-1]
            talib.MACD(c, 12, 26, 9)[0][-1]
            talib.BBANDS(c, 20, 2.0, 2.0)[0][-1]  # default matype: SMA
            talib.ATR(h, low, c, 14)[-1]
            talib.VWAP(h, low, c, v)[-1]
    return int(n_bars * subset.size)


def parity_check(bars: Bars) -> float | None:
    """Max relative gap, ours vs TA-Lib on full history, over one instrument's valid values."""
    try:
        import talib
    except ImportError:
        return None
    n_bars = bars.c.shape[0]
    state = IndicatorState(capacity=1)
    state.add_instruments(1)
    h, low, c, v = (np.ascontiguousarray(x[:, 0]) for x in (bars.h, bars.low, bars.c, bars.v))
    got: dict[str, list[float]] = {k: [] for k in ("sma_20", "ema_21", "rsi", "macd", "atr")}
    for b in range(n_bars):
        out = state.update([0], 0, c[b], h[b], low[b], c[b], v[b])
        for k, vals in got.items():
            vals.append(float(out[k][0]))
    refs = {
        "sma_20": talib.SMA(c, 20),
        "ema_21": talib.EMA(c, 21),
        "rsi": talib.RSI(c, 14),
        "macd": talib.MACD(c, 12, 26, 9)[0],
        "atr": talib.ATR(h, low, c, 14),
    }
    worst = 0.0
    for k, ref in refs.items():
        ours = np.asarray(got[k])
        m = ~np.isnan(ref)
        rel = np.abs(ours[m] - ref[m]) / np.maximum(np.abs(ref[m]), 1e-300)
        worst = max(worst, float(rel.max(initial=0.0)))
    return worst


def timed(fn: Callable[[], int], repeat: int) -> dict[str, Any]:
    """One untimed warm-up, then ``repeat`` timed runs; medians."""
    fn()
    secs: list[float] = []
    updates = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        updates = fn()
        secs.append(time.perf_counter() - t0)
    med = statistics.median(secs)
    return {
        "updates": updates,
        "seconds": [round(s, 6) for s in secs],
        "median_s": round(med, 6),
        "updates_per_s": round(updates / med, 1),
        "us_per_update": round(med / updates * 1e6, 3),
    }


def versions() -> dict[str, Any]:
    """Interpreter, NumPy and reference library versions, plus the machine."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    for dist in ("TA-Lib", "talipp"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    try:
        import talib

        raw = getattr(talib, "__ta_version__", b"")
        info["ta_lib_c"] = (raw.decode() if isinstance(raw, bytes) else str(raw)).split(" ")[0]
    except ImportError:
        pass
    return info


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every engine, print a table or one JSON document."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.indicators", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--instruments", type=int, default=1000)
    ap.add_argument("--bars", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--window", type=int, default=500, help="TA-Lib recompute history (bars)")
    ap.add_argument(
        "--ref-instruments",
        type=int,
        default=50,
        help="instruments timed for the per-instrument engines (single, talipp, talib)",
    )
    ap.add_argument(
        "--single-instruments",
        type=int,
        default=10,
        help="instruments timed for sepstream_single (one call per bar: slow to run)",
    )
    ap.add_argument(
        "--engines",
        default="sepstream_batch,sepstream_single,sepstream_series,talipp,talib_recompute",
        help="comma-separated subset of the engines",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = ap.parse_args(argv)

    bars = make_bars(args.instruments, args.bars, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    n_ref = min(args.ref_instruments, args.instruments)
    subset = np.sort(rng.choice(args.instruments, size=n_ref, replace=False)).astype(np.intp)
    single = subset[: max(1, min(args.single_instruments, subset.size))]
    engines: dict[str, Callable[[], int]] = {
        "sepstream_batch": lambda: run_batch(bars),
        "sepstream_single": lambda: run_single(bars, single),
        "sepstream_series": lambda: run_series(bars, subset),
        "talipp": lambda: run_talipp(bars, subset),
        "talib_recompute": lambda: run_talib(bars, subset, args.window),
    }
    wanted = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(wanted) - set(engines)
    if unknown:
        ap.error(f"unknown engines: {', '.join(sorted(unknown))}")

    results: dict[str, Any] = {}
    for name in wanted:
        log(f"[bench.indicators] {name} ...")
        try:
            results[name] = timed(engines[name], args.repeat)
        except ImportError as exc:
            results[name] = {"skipped": f"{exc.name or exc} not installed"}
            continue
        r = results[name]
        log(f"  {r['updates_per_s']:>14,.0f} updates/s  ({r['us_per_update']:.2f} us/update)")

    base = results.get("sepstream_batch", {}).get("updates_per_s")
    speedup = {
        name: round(base / r["updates_per_s"], 1)
        for name, r in results.items()
        if base and name != "sepstream_batch" and "updates_per_s" in r
    }
    doc = {
        "benchmark": "indicators",
        "params": {
            "instruments": args.instruments,
            "bars": args.bars,
            "repeat": args.repeat,
            "window": args.window,
            "ref_instruments": n_ref,
            "single_instruments": int(single.size),
            "seed": args.seed,
        },
        "env": versions(),
        "results": results,
        "batch_speedup_vs": speedup,
        "parity_max_rel_vs_talib": parity_check(bars),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{'engine':<18} {'updates/s':>14} {'us/update':>10} {'median s':>9}")
        for name, r in results.items():
            if "skipped" in r:
                print(f"{name:<18} skipped: {r['skipped']}")
                continue
            print(
                f"{name:<18} {r['updates_per_s']:>14,.0f} {r['us_per_update']:>10.2f}"
                f" {r['median_s']:>9.3f}"
            )
        for name, x in speedup.items():
            print(f"sepstream_batch is {x}x {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
