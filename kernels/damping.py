"""Bitspace damping kernel (docs/ARCHITECTURE.md#bitspace-damping), batched over instruments, NumPy
or CuPy.

Pure compute: no I/O, no logging, no imports from outside ``kernels/``.  The algorithm is
written once against an array module ``xp`` (``numpy`` or ``cupy``) so the two backends run
the same code and cannot drift apart; NumPy in float64 is the reference.  On CuPy the
default (``method="kernel"``) is one fused CUDA kernel per chunk of rows, one thread per
window (``kernels/damping_gpu.py``, ``kernels/damping_kernel.cu``), for windows up to
``W = 257``; the ``xp`` methods stay available there (and serve longer windows), with the
weighted sums of ``method="fused"`` in a small reduction kernel.

Definitions used here (in detail; docs/ARCHITECTURE.md#damping-math):

* Bits: ``b_i = 1`` if ``close[i+1] > close[i]`` else ``0`` (a flat close is "not rose"),
  ``i = 0..T`` with ``T + 1 = W - 1``.  Bits are compared in the input's own precision so
  float32 and float64 runs see the same bits.
* Damping loop, per row, starting from the unweighted ``λ_0``: iteration ``k = 1, 2, ...``
  computes the weighted ratios with ``w_j = e^(-λ_{k-1}·(T-1-j))``, ``λ'_k`` from them, and
  the relaxed ``λ_k = (λ_{k-1} + λ'_k) / 2``.  ``Δλ_k = λ_k - λ_{k-1}`` is the change of λ
  in that relaxed step.  The loop stops after the first ``k`` with ``|Δλ_k| < 1e-6``
  (``converged``) or after ``k = 32``.  ``iterations`` is that ``k``: the number of relaxed
  updates applied, always in ``1..32``; ``lam`` is ``λ_k``.
* Outputs: H, C, S, pr (hence collapse) are recomputed from the ratios weighted at the
  final ``λ_k``; the trajectory and ``V`` use the final ``λ_k`` too, so every output is a
  function of the reported ``lam`` alone.
* Confidence: ``max_l cos(P, L_l)`` clipped to ``[0, 1]``; a zero path, or a zero library
  row, contributes similarity 0.  One matrix product per chunk of rows (the whole batch
  when it fits in one chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from kernels import damping_gpu

__all__ = [
    "COLLAPSE_PR",
    "DEFAULT_WINDOW",
    "K1",
    "K2",
    "MAX_ITER",
    "METHODS",
    "TOL",
    "BackendUnavailableError",
    "DampingResult",
    "available_backends",
    "damp",
    "damp_arrays",
    "decay",
    "default_library",
    "entropy_from_ratios",
    "resolve_backend",
]

K1: Final = 0.30
K2: Final = 0.20
H_MIN: Final = 0.05
H_MAX: Final = 1.0
LAM_MIN: Final = 0.01
LAM_MAX: Final = 1.0
COLLAPSE_PR: Final = 0.30
TOL: Final = 1e-6
MAX_ITER: Final = 32
DEFAULT_WINDOW: Final = 64
_LOG2_3: Final = math.log2(3.0)
_DTYPES: Final[dict[str, type[np.floating[Any]]]] = {"float64": np.float64, "float32": np.float32}
_CHUNK_ROWS: Final = {"numpy": 32_768, "cupy": 1 << 20}

FloatArray = npt.NDArray[np.floating[Any]]


class BackendUnavailableError(RuntimeError):
    """A backend was forced (``backend="cupy"``) but cannot run on this machine."""


@dataclass(frozen=True, eq=False, slots=True)
class DampingResult:
    """Per-window outputs of :func:`damp` (docs/ARCHITECTURE.md#damping-outputs), NumPy arrays of
    length N.

    ``iterations``: relaxed λ updates applied (1..32); ``converged``: the last one moved λ
    by less than 1e-6; ``lam``: λ after it.  ``backend``: the backend that ran, for the
    caller to log.  ``library_version`` is passed through from the caller.
    """

    entropy: FloatArray
    coherence: FloatArray
    stability: FloatArray
    lam: FloatArray
    value: FloatArray
    confidence: FloatArray
    iterations: npt.NDArray[np.int32]
    converged: npt.NDArray[np.bool_]
    collapse: npt.NDArray[np.bool_]
    library_version: str | None
    backend: str

    def __len__(self) -> int:
        return int(self.lam.shape[0])


# --------------------------------------------------------------------------- backends


@cache
def _cupy_usable() -> bool:
    """True when cupy imports and sees a device; cached because the probe is slow."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def available_backends() -> tuple[str, ...]:
    """Backends usable here, reference first."""
    return ("numpy", "cupy") if _cupy_usable() else ("numpy",)


def resolve_backend(name: str = "auto") -> str:
    """Map ``auto``/``numpy``/``cupy`` to the backend that will run; callers log the result."""
    if name == "auto":
        return "cupy" if _cupy_usable() else "numpy"
    if name == "numpy":
        return "numpy"
    if name == "cupy":
        if not _cupy_usable():
            raise BackendUnavailableError(
                "backend='cupy' was requested but cupy is not installed or no CUDA device "
                "is usable (install the 'gpu' extra on a machine with a GPU, or use "
                "backend='auto'/'numpy')"
            )
        return "cupy"
    raise ValueError(f"unknown backend {name!r}; expected 'auto', 'numpy' or 'cupy'")


def _xp(backend: str) -> Any:
    if backend == "cupy":
        import cupy

        return cupy
    return np


def _is_device_array(a: object) -> bool:
    return hasattr(a, "__cuda_array_interface__")


# --------------------------------------------------------------------------- the math


def default_library(t: int) -> npt.NDArray[np.float64]:
    """The built-in (3, T+1) library: e^(-0.1 i), i/T, sin(2π i/(T+1)) for i = 0..T."""
    if t < 1:
        raise ValueError(f"need at least one transition (T >= 1), got T={t}")
    i = np.arange(t + 1, dtype=np.float64)
    return np.stack([np.exp(-0.1 * i), i / t, np.sin(2.0 * np.pi * i / (t + 1))])


def _xlog2x(xp: Any, p: Any) -> Any:
    """p·log2 p with 0·log2 0 = 0, without warnings (log of a tiny floor instead of 0)."""
    return p * xp.log2(xp.maximum(p, np.finfo(p.dtype).tiny))


def entropy_from_ratios(p0: Any, pf: Any, pr: Any, xp: Any = np) -> Any:
    """H = -Σ p·log2 p / log2 3, clamped to [0.05, 1] (§5.2)."""
    h = -(_xlog2x(xp, p0) + _xlog2x(xp, pf) + _xlog2x(xp, pr)) / _LOG2_3
    return xp.clip(h, H_MIN, H_MAX)


def decay(entropy: Any, xp: Any = np) -> Any:
    """λ = clamp(k1·H + k2·(1 − C), 0.01, 1) with C = 1 − H (§5.3)."""
    coherence = 1.0 - entropy
    return xp.clip(K1 * entropy + K2 * (1.0 - coherence), LAM_MIN, LAM_MAX)


_FUSED_KERNELS: dict[int, Any] = {}
_COMPACT: Final = 0.75  # shrink the working set once at most this share of it is active
_SMALL: Final = 256  # below this many rows, per-T-step loops cost more than exp matrices
METHODS: Final = ("horner", "direct", "fused", "kernel")


def _fused_kernel(kind: int) -> Any:
    """CuPy reduction Σ_j [kind_j == k]·e^(−λ·m_j) along the last axis, no (N, T) temporaries."""
    if kind not in _FUSED_KERNELS:
        import cupy

        _FUSED_KERNELS[kind] = cupy.ReductionKernel(
            "T lam, T m, int8 code",
            "T y",
            f"(code == {kind}) ? exp(-lam * m) : (T)0",
            "a + b",
            "y = a",
            "0",
            f"sepstream_damping_wsum_{kind}",
            reduce_type="T",
        )
    return _FUSED_KERNELS[kind]


class _Sums:
    """Weighted transition sums S_k = Σ_j [type_j = k]·e^(−λ·(T−1−j)), k = NULL, FLIP, RUPTURE.

    Three interchangeable evaluations of the same sums (any xp unless noted):

    * ``horner``: Horner's rule in r = e^(−λ) over the T transitions, vectorised across
      rows, on (T, 3, n) masks: two vector ops per transition and no per-element exp, which
      makes it the fastest on NumPy (the NumPy default).  Working sets under ``_SMALL``
      rows use the weights directly instead (same sums, far fewer Python-level ops).
    * ``direct``: the weights e^(−λ·m) as an (n, T) matrix, then one einsum against the
      masks; the literal formula, and the CPU twin of ``fused``.
    * ``fused`` (cupy only, its default): one reduction kernel per type over the (n, T)
      type codes, computing e^(−λ·m) in registers (no (n, T) temporaries).

    All three sum each type directly (the total is S_0 + S_f + S_r, never a difference),
    so small ratios keep their relative precision in float32.
    """

    def __init__(self, xp: Any, kind: Any, ft: type[np.floating[Any]], method: str) -> None:
        """``kind``: (T, n) int8 transition codes, rows of the batch on the last axis."""
        self.xp, self.ft, self.method = xp, ft, method
        self.t = int(kind.shape[0])
        m = xp.arange(self.t - 1, -1, -1, dtype=ft)  # m_j = T-1-j, the weight's exponent
        if method == "fused":
            self.state = xp.ascontiguousarray(kind.T)  # (n, T) int8
            self.row_axis = 0
            self.m = m[None, :]
        elif method == "direct":
            rows_first = kind.T
            masks = xp.stack([rows_first == k for k in range(3)]).astype(ft)
            self.state = xp.ascontiguousarray(masks)  # (3, n, T)
            self.row_axis = 1
            self.m = -m[None, :]
        elif method == "horner":
            masks = xp.stack([kind == k for k in range(3)], axis=1)
            self.state = xp.ascontiguousarray(masks)  # (T, 3, n) bool
            self.row_axis = 2
            self.m = -m[:, None]
        else:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")

    def take(self, rows: Any) -> _Sums:
        """The same sums restricted to a subset of rows (compaction of the active set)."""
        other = object.__new__(_Sums)
        other.__dict__.update(self.__dict__)
        other.state = self.xp.take(self.state, rows, axis=self.row_axis)
        return other

    def sums(self, lam: Any) -> Any:
        """(3, n) array of S_NULL, S_FLIP, S_RUPTURE weighted at λ."""
        xp = self.xp
        if self.method == "fused":
            lam2 = lam[:, None]
            return xp.stack([_fused_kernel(k)(lam2, self.m, self.state, axis=1) for k in range(3)])
        if self.method == "direct":
            e = xp.multiply(lam[:, None], self.m)
            xp.exp(e, out=e)
            return xp.einsum("nt,knt->kn", e, self.state)
        if lam.shape[0] < _SMALL:
            # Few rows: Python-level op count, not arithmetic, is the cost; use the weights.
            e = xp.exp(self.m * lam[None, :])
            return xp.einsum("tn,tkn->kn", e, self.state.astype(self.ft))
        r = xp.exp(-lam)
        acc = xp.zeros((3, lam.shape[0]), dtype=self.ft)
        for j in range(self.t):
            acc *= r
            acc += self.state[j]
        return acc

    def ratios(self, lam: Any) -> tuple[Any, Any, Any]:
        """(p0, pf, pr) weighted at λ."""
        s = self.sums(lam)
        z = s[0] + s[1] + s[2]
        return s[0] / z, s[1] / z, s[2] / z


def _relax(xp: Any, sums: _Sums, lam: Any) -> Any:
    """One relaxed step λ ← (λ + λ'(weighted ratios at λ)) / 2."""
    p0, pf, pr = sums.ratios(lam)
    target = decay(entropy_from_ratios(p0, pf, pr, xp), xp)
    return ((lam + target) * 0.5).astype(sums.ft, copy=False)


def _iterate(xp: Any, sums: _Sums, lam0: Any) -> tuple[Any, Any, Any]:
    """Damping loop (§5.5) for all rows at once; returns (λ, iterations, converged).

    Rows that converge are frozen (their λ no longer changes) and, once few enough rows
    are left active, dropped from the working set so later iterations cost less.
    """
    n = int(lam0.shape[0])
    lam = lam0.copy()
    iterations = xp.zeros(n, dtype=np.int32)
    converged = xp.zeros(n, dtype=bool)
    idx: Any = None  # working row -> chunk row (None: identity)
    lam_w, it_w, conv_w = lam, iterations, converged
    active = xp.ones(n, dtype=bool)
    work = sums
    for it in range(1, MAX_ITER + 1):
        new = _relax(xp, work, lam_w)
        done = xp.abs(new - lam_w) < TOL
        lam_w = xp.where(active, new, lam_w)
        it_w += active
        conv_w |= active & done
        active &= ~done
        n_active = int(xp.count_nonzero(active))
        if n_active == 0 or it == MAX_ITER:
            break
        if n_active <= _COMPACT * int(active.shape[0]):
            if idx is None:
                lam = lam_w
            else:
                lam[idx], iterations[idx], converged[idx] = lam_w, it_w, conv_w
            keep = xp.flatnonzero(active)
            idx = keep if idx is None else idx[keep]
            lam_w, it_w, conv_w = lam_w[keep], it_w[keep], conv_w[keep]
            active = xp.ones(n_active, dtype=bool)
            work = work.take(keep)
    if idx is None:
        return lam_w, it_w, conv_w
    lam[idx], iterations[idx], converged[idx] = lam_w, it_w, conv_w
    return lam, iterations, converged


def _trajectory(xp: Any, lam: Any, bits: Any, ft: type[np.floating[Any]]) -> Any:
    """(T+1, n) paths P = [b_0, A_1..A_T], A_k = A_{k-1} + (b_k − b_0)·e^(−λk) (§5.4).

    Many rows: powers by repeated multiplication by r = e^(−λ) (re-anchored with exp every
    16 steps so rounding cannot build up), one contiguous vector op per step.  Few rows:
    the (T, n) weight matrix and a cumulative sum.
    """
    t1, n = bits.shape
    b0 = bits[0].astype(ft)
    steps = bits[1:].astype(ft) - b0  # (T, n): b_j − b_0 for j = 1..T
    path = xp.empty((t1, n), dtype=ft)
    path[0] = b0
    if n < _SMALL:
        j = xp.arange(1, t1, dtype=ft)[:, None]
        steps *= xp.exp(-j * lam[None, :])
        path[1:] = xp.cumsum(steps, axis=0)
        return path
    r = xp.exp(-lam)
    power = xp.ones(n, dtype=ft)
    term = xp.empty(n, dtype=ft)
    prev = xp.zeros(n, dtype=ft)  # A_0 = 0 (the sum is empty)
    for k in range(1, t1):
        if k % 16 == 0:
            xp.exp(lam * -float(k), out=power)
        else:
            power *= r
        xp.multiply(power, steps[k - 1], out=term)
        xp.add(prev, term, out=path[k])
        prev = path[k]
    return path


def _damp_chunk(
    xp: Any, closes: Any, lib_unit: Any, ft: type[np.floating[Any]], method: str
) -> dict[str, Any]:
    """All of §5 for one block of rows; every step is vectorised across the rows."""
    t = closes.shape[1] - 2
    # Rows of the batch go on the last axis from here on, so each per-bit step is one
    # contiguous vector operation across all rows.
    bits = xp.ascontiguousarray((closes[:, 1:] > closes[:, :-1]).T)  # (T+1, n): b_0..b_T
    kind = bits[:-1].astype(np.int8) + bits[1:]  # (T, n): 0 NULL, 1 FLIP, 2 RUPTURE

    # Steps 1-3 on the unweighted counts give the starting λ.
    n0 = (kind == 0).sum(axis=0).astype(ft)
    nr = (kind == 2).sum(axis=0).astype(ft)
    lam0 = decay(entropy_from_ratios(n0 / t, (t - n0 - nr) / t, nr / t, xp), xp)
    sums = _Sums(xp, kind, ft, method)
    del kind, n0, nr

    # Step 5, then the outputs from the ratios weighted at the final λ.
    lam, iterations, converged = _iterate(xp, sums, lam0.astype(ft, copy=False))
    p0, pf, pr = sums.ratios(lam)
    del sums
    entropy = entropy_from_ratios(p0, pf, pr, xp).astype(ft, copy=False)

    # Step 4 at the final λ, rows on the last axis: P = [b_0, A_1..A_T].
    path = _trajectory(xp, lam, bits, ft)
    del bits

    # Step 6: cosine against the unit library rows, one (L, T+1)·(T+1, n) product.
    norm = xp.sqrt(xp.einsum("kn,kn->n", path, path))
    inv = xp.where(norm > 0, 1.0 / xp.maximum(norm, np.finfo(ft).tiny), 0.0).astype(ft)
    cos = lib_unit @ (path * inv)
    confidence = xp.clip(cos.max(axis=0), 0.0, 1.0)
    del cos

    return {
        "entropy": entropy,
        "coherence": (1.0 - entropy).astype(ft, copy=False),
        "stability": (1.0 - pr).astype(ft, copy=False),
        "lam": lam,
        "value": path[-1].copy(),
        "confidence": confidence.astype(ft, copy=False),
        "iterations": iterations,
        "converged": converged,
        "collapse": pr >= COLLAPSE_PR,
    }


# --------------------------------------------------------------------------- validation


def _check_dtype(dtype: Any) -> type[np.floating[Any]]:
    try:
        key = np.dtype(dtype).name
    except TypeError:
        key = ""
    if key not in _DTYPES:
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return _DTYPES[key]


def _check_closes(closes: Any) -> None:
    if closes.ndim != 2:
        raise ValueError(f"closes must be a 2-D (N, W) array, got shape {closes.shape}")
    if closes.shape[1] < 3:
        raise ValueError(f"window W must be >= 3 (T = W-2 transitions), got W={closes.shape[1]}")
    if closes.dtype.kind not in "iuf":
        raise ValueError(f"closes must be a real numeric array, got dtype {closes.dtype}")


def _library_unit(library: Any, t: int) -> npt.NDArray[np.float64]:
    """Validate the (L, T+1) library and return it with rows scaled to unit length."""
    given: Any = default_library(t) if library is None else library
    if _is_device_array(given):
        given = given.get()
    lib = np.asarray(given, dtype=np.float64)
    if lib.ndim != 2:
        raise ValueError(f"library must be a 2-D (L, T+1) array, got shape {lib.shape}")
    if lib.shape[0] < 1:
        raise ValueError("library must hold at least one reference path (L >= 1)")
    if lib.shape[1] != t + 1:
        raise ValueError(
            f"library paths must have length T+1 = W-1 = {t + 1} to match the window, "
            f"got shape {lib.shape}"
        )
    if not np.isfinite(lib).all():
        raise ValueError("library contains non-finite values")
    norm = np.sqrt(np.einsum("lk,lk->l", lib, lib))
    unit: npt.NDArray[np.float64] = lib / np.where(norm > 0, norm, 1.0)[:, None]
    return unit


# --------------------------------------------------------------------------- entry points


def damp_arrays(
    closes: Any,
    library: Any = None,
    *,
    backend: str = "numpy",
    dtype: Any = "float64",
    chunk_rows: int | None = None,
    method: str | None = None,
    transfer_dtype: Any = None,
) -> dict[str, Any]:
    """Run the kernel and keep the outputs on the backend (cupy arrays stay on the device).

    For callers that chain GPU work or time the device without the result copy; ``damp``
    is the public, NumPy-returning wrapper.  ``backend`` must already be resolved.
    ``method`` picks how the loop's weighted sums are evaluated (see ``_Sums``): default
    ``horner`` on numpy; on cupy ``kernel`` (the fused CUDA kernel, W <= 257) else
    ``fused``; ``direct`` and ``horner`` run on both.  ``transfer_dtype="float32"`` lets
    the ``kernel`` method send float64 host closes to the device as float32.
    """
    return _run(
        closes,
        library,
        backend=backend,
        dtype=dtype,
        chunk_rows=chunk_rows,
        method=method,
        transfer_dtype=transfer_dtype,
        to_host=False,
    )


def _run(
    closes: Any,
    library: Any,
    *,
    backend: str,
    dtype: Any,
    chunk_rows: int | None,
    method: str | None,
    transfer_dtype: Any,
    to_host: bool,
) -> dict[str, Any]:
    """``damp_arrays``; with ``to_host`` the kernel method returns NumPy arrays directly."""
    if backend not in ("numpy", "cupy"):
        raise ValueError(f"backend must be a resolved name ('numpy' or 'cupy'), got {backend!r}")
    ft = _check_dtype(dtype)
    xp = _xp(backend)
    if method is None:
        method = "horner"
        if backend == "cupy":
            w_in = closes.shape[1] if getattr(closes, "ndim", 0) == 2 else 0
            method = "kernel" if w_in <= damping_gpu.MAX_WINDOW else "fused"
    if method not in METHODS or (method in ("fused", "kernel") and backend != "cupy"):
        raise ValueError(f"method {method!r} is not available on backend {backend!r}")
    if backend == "numpy" and _is_device_array(closes):
        closes = closes.get()
    if not _is_device_array(closes):
        closes = np.asarray(closes)
    _check_closes(closes)
    n, w = closes.shape
    t = w - 2
    if chunk_rows is not None and int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if method == "kernel":
        if w > damping_gpu.MAX_WINDOW:
            raise ValueError(
                f"method 'kernel' handles windows up to W={damping_gpu.MAX_WINDOW}, got W={w}"
            )
        unit = _library_unit(library, t)
        if _is_device_array(closes):
            res = damping_gpu.damp_device(closes, unit, ft, chunk_rows=chunk_rows)
            return {k: v.get() for k, v in res.items()} if to_host else res
        return damping_gpu.damp_host(
            closes,
            unit,
            ft,
            to_host=to_host,
            transfer_dtype=transfer_dtype,
            chunk_rows=chunk_rows,
        )
    if transfer_dtype is not None:
        raise ValueError("transfer_dtype applies to method 'kernel' only")
    lib_unit = xp.asarray(_library_unit(library, t).astype(ft))
    rows = _CHUNK_ROWS[backend] if chunk_rows is None else int(chunk_rows)

    out: dict[str, Any] = {
        name: xp.empty(n, dtype=kind)
        for name, kind in (
            ("entropy", ft),
            ("coherence", ft),
            ("stability", ft),
            ("lam", ft),
            ("value", ft),
            ("confidence", ft),
            ("iterations", np.int32),
            ("converged", bool),
            ("collapse", bool),
        )
    }
    for start in range(0, n, rows):
        block = xp.asarray(closes[start : start + rows])
        if block.dtype.kind == "f" and not bool(xp.isfinite(block).all()):
            raise ValueError("closes contain non-finite values (NaN or inf)")
        part = _damp_chunk(xp, block, lib_unit, ft, method)
        for name, arr in part.items():
            out[name][start : start + rows] = arr
    return out


def damp(
    closes: Any,
    library: Any = None,
    *,
    backend: str = "auto",
    dtype: Any = "float64",
    library_version: str | None = None,
    chunk_rows: int | None = None,
    transfer_dtype: Any = None,
) -> DampingResult:
    """Bitspace damping for an (N, W) batch of closes (docs/ARCHITECTURE.md#kernel-api).

    ``library`` is an (L, W-1) array of reference paths or None for the default library.
    ``backend`` is ``auto`` (cupy when usable, else numpy), ``numpy`` or ``cupy``; the
    chosen one is in ``result.backend`` for the caller to log.  ``dtype`` is ``float64``
    (the reference) or ``float32``.  Rows are processed in blocks of ``chunk_rows``
    (default 32,768 on numpy; on cupy ~128 MiB of closes, capped by the free device memory)
    to bound memory.  ``transfer_dtype="float32"`` (cupy only) sends float64 closes to the
    device as float32, half the bytes, for callers whose prices survive that rounding.
    Results are NumPy arrays.
    """
    name = resolve_backend(backend)
    out = _run(
        closes,
        library,
        backend=name,
        dtype=dtype,
        chunk_rows=chunk_rows,
        method=None,
        transfer_dtype=transfer_dtype,
        to_host=True,
    )
    if name == "cupy":
        out = {k: (v if isinstance(v, np.ndarray) else v.get()) for k, v in out.items()}
    return DampingResult(**out, library_version=library_version, backend=name)
