"""Bitspace damping kernel (docs/ARCHITECTURE.md#damping-math) against hand-computed cases and a
scalar reference.

``_reference_row`` below is written straight from docs/ARCHITECTURE.md#damping-math in plain Python
(one window, lists and ``math``), independently of the vectorised kernel, so the two can be compared
row by row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.damping import (
    BackendUnavailableError,
    DampingResult,
    available_backends,
    damp,
    damp_arrays,
    decay,
    default_library,
    entropy_from_ratios,
    resolve_backend,
)

FLOAT_FIELDS = ("entropy", "coherence", "stability", "lam", "value", "confidence")
W = 64
T = W - 2  # 63 bits b_0..b_62, 62 transitions

# --------------------------------------------------------------------------- reference


def _reference_row(closes: Sequence[float], library: Sequence[Sequence[float]]) -> dict[str, Any]:
    """One window, computed literally as docs/ARCHITECTURE.md#damping-math describes it."""
    bits = [1 if closes[i + 1] > closes[i] else 0 for i in range(len(closes) - 1)]
    t = len(bits) - 1
    # 00 -> NULL (0), 01/10 -> FLIP (1), 11 -> RUPTURE (2)
    kinds = [bits[j] + bits[j + 1] for j in range(t)]

    def ratios(weights: Sequence[float]) -> list[float]:
        sums = [0.0, 0.0, 0.0]
        for kind, weight in zip(kinds, weights, strict=True):
            sums[kind] += weight
        total = sum(weights)
        return [s / total for s in sums]

    def entropy(p: Sequence[float]) -> float:
        h = -sum(x * math.log2(x) for x in p if x > 0) / math.log2(3)
        return min(max(h, 0.05), 1.0)

    def lam_of(h: float) -> float:
        c = 1 - h
        return min(max(0.30 * h + 0.20 * (1 - c), 0.01), 1.0)

    def weights(lam: float) -> list[float]:
        return [math.exp(-lam * (t - 1 - j)) for j in range(t)]

    lam = lam_of(entropy(ratios([1.0] * t)))
    iterations, converged = 0, False
    while iterations < 32:
        relaxed = (lam + lam_of(entropy(ratios(weights(lam))))) / 2
        iterations += 1
        delta = relaxed - lam
        lam = relaxed
        if abs(delta) < 1e-6:
            converged = True
            break

    p = ratios(weights(lam))
    h = entropy(p)
    path = [float(bits[0])]
    acc = 0.0
    for k in range(1, t + 1):
        acc += (bits[k] - bits[0]) * math.exp(-lam * k)
        path.append(acc)
    norm = math.sqrt(sum(x * x for x in path))
    best = 0.0
    if norm > 0:
        for ref in library:
            ref_norm = math.sqrt(sum(x * x for x in ref))
            if ref_norm > 0:
                cos = sum(a * b for a, b in zip(path, ref, strict=True)) / (norm * ref_norm)
                best = max(best, cos)
    return {
        "entropy": h,
        "coherence": 1 - h,
        "stability": 1 - p[2],
        "lam": lam,
        "value": path[-1],
        "confidence": min(max(best, 0.0), 1.0),
        "iterations": iterations,
        "converged": converged,
        "collapse": p[2] >= 0.30,
        "pr": p[2],
    }


def _closes_from_bits(bits: Sequence[int]) -> npt.NDArray[np.float64]:
    """A close series whose bits are ``bits`` (+1 when the bit is 1, −1 otherwise)."""
    steps = [1.0 if b else -1.0 for b in bits]
    return 100.0 + np.concatenate([[0.0], np.cumsum(steps)])


def _random_walks(seed: int, n: int, w: int = W) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return 100.0 + np.cumsum(rng.normal(0.0, 1.0, size=(n, w)), axis=1)


def _gbm_with_jumps(seed: int, n: int, w: int = W) -> npt.NDArray[np.float64]:
    """Real-looking closes: GBM, Poisson jumps, prices rounded to a 0.01 tick (flat bars)."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.0005, 0.02, size=(n, 1))
    drift = rng.normal(0.0, 0.001, size=(n, 1))
    rets = drift + sigma * rng.standard_normal((n, w))
    jumps = rng.random((n, w)) < 0.02
    rets += np.where(jumps, rng.normal(0.0, 0.05, size=(n, w)), 0.0)
    start = rng.uniform(1.0, 50_000.0, size=(n, 1))
    return np.round(start * np.exp(np.cumsum(rets, axis=1)), 2)


def _row(result: DampingResult, i: int) -> dict[str, Any]:
    return {f: getattr(result, f)[i].item() for f in (*FLOAT_FIELDS, "iterations")} | {
        "converged": bool(result.converged[i]),
        "collapse": bool(result.collapse[i]),
    }


def _assert_matches_reference(closes: npt.NDArray[np.float64], lib: Any = None) -> None:
    result = damp(closes, lib, backend="numpy")
    library = default_library(closes.shape[1] - 2) if lib is None else np.asarray(lib)
    for i in range(closes.shape[0]):
        want = _reference_row(closes[i].tolist(), library.tolist())
        got = _row(result, i)
        for f in FLOAT_FIELDS:
            assert got[f] == pytest.approx(want[f], abs=1e-10, rel=1e-10), (i, f)
        assert got["iterations"] == want["iterations"], i
        assert got["converged"] == want["converged"], i
        if abs(want["pr"] - 0.30) > 1e-9:
            assert got["collapse"] == want["collapse"], i


# --------------------------------------------------------------------------- hand cases


def test_falling_closes_all_null_zero_path() -> None:
    """Bits all 0: 62 NULL transitions, p = (1, 0, 0).

    H = 0 → clamped to 0.05; C = 0.95; S = 1 − 0 = 1; λ = 0.30·0.05 + 0.20·0.05 = 0.025.
    Weighting cannot change p = (1, 0, 0), so λ' = λ, Δλ = 0: one iteration, converged.
    P = [0, 0, …, 0] (b_j − b_0 = 0): V = 0 and, being a zero path, confidence 0.
    """
    closes = np.array([100.0 - i for i in range(W)])[None, :]
    r = damp(closes, backend="numpy")
    assert r.entropy[0] == pytest.approx(0.05, abs=1e-15)
    assert r.coherence[0] == pytest.approx(0.95, abs=1e-15)
    assert r.stability[0] == 1.0
    assert r.lam[0] == pytest.approx(0.025, abs=1e-15)
    assert r.value[0] == 0.0
    assert r.confidence[0] == 0.0
    assert r.iterations[0] == 1
    assert bool(r.converged[0])
    assert not bool(r.collapse[0])


def test_flat_closes_count_as_not_rose() -> None:
    """b = 1 only if the close rose, so a flat series is the same as a falling one."""
    flat = damp(np.full((1, W), 42.0), backend="numpy")
    falling = damp(np.array([100.0 - i for i in range(W)])[None, :], backend="numpy")
    for f in (*FLOAT_FIELDS, "iterations", "converged", "collapse"):
        np.testing.assert_array_equal(getattr(flat, f), getattr(falling, f))


def test_rising_closes_all_rupture() -> None:
    """Bits all 1: 62 RUPTURE transitions, p = (0, 0, 1).

    H = 0.05, C = 0.95, S = 1 − 1 = 0, collapse (pr = 1 ≥ 0.30), λ = 0.025, 1 iteration.
    P = [1, 0, …, 0] (b_j − b_0 = 0): V = 0.  Cosine with the default library: the ramp
    i/T and the sine both start at 0, so only e^(−0.1·i) matches, with
    cos = 1 / ‖e^(−0.1·i)‖ = 1 / sqrt(Σ_{i=0..62} e^(−0.2·i)).
    """
    closes = np.array([100.0 + i for i in range(W)])[None, :]
    r = damp(closes, backend="numpy")
    expected_conf = 1.0 / math.sqrt(sum(math.exp(-0.2 * i) for i in range(T + 1)))
    assert expected_conf == pytest.approx(0.42576, abs=1e-5)
    assert r.entropy[0] == pytest.approx(0.05, abs=1e-15)
    assert r.coherence[0] == pytest.approx(0.95, abs=1e-15)
    assert r.stability[0] == pytest.approx(0.0, abs=1e-15)
    assert r.lam[0] == pytest.approx(0.025, abs=1e-15)
    assert r.value[0] == 0.0
    assert r.confidence[0] == pytest.approx(expected_conf, abs=1e-12)
    assert r.iterations[0] == 1
    assert bool(r.converged[0])
    assert bool(r.collapse[0])


def test_alternating_closes_all_flip() -> None:
    """Bits 0,1,0,1,…,0 (63 bits): 62 FLIP transitions, p = (0, 1, 0).

    H = 0.05, C = 0.95, S = 1, no collapse, λ = 0.025, 1 iteration.  b_0 = 0, so
    A_k = Σ_{j ≤ k, j odd} e^(−0.025·j) and V = A_62 = Σ_{j = 1,3,…,61} e^(−0.025·j).
    """
    bits = [j % 2 for j in range(T + 1)]
    closes = _closes_from_bits(bits)[None, :]
    r = damp(closes, backend="numpy")
    expected_v = sum(math.exp(-0.025 * j) for j in range(1, T + 1, 2))
    assert expected_v == pytest.approx(15.7534, abs=1e-4)
    assert r.entropy[0] == pytest.approx(0.05, abs=1e-15)
    assert r.stability[0] == 1.0
    assert r.lam[0] == pytest.approx(0.025, abs=1e-15)
    assert r.value[0] == pytest.approx(expected_v, abs=1e-12)
    assert r.iterations[0] == 1
    assert not bool(r.collapse[0])
    _assert_matches_reference(closes)


def test_trend_reversal_recent_transitions_weigh_more() -> None:
    """32 falling bits then 31 rising: NULL×31, FLIP×1 (j = 31), RUPTURE×30 (j = 32..61).

    Unweighted p = (31/62, 1/62, 30/62):
    H0 = −(0.5·log2 0.5 + (1/62)·log2(1/62) + (30/62)·log2(30/62)) / log2 3
       = (0.5 + 0.09603 + 0.50676) / 1.58496 = 0.69579, λ0 = 0.5·H0 = 0.34790.
    The damping weights favour the recent (rising) end, so the weighted rupture ratio is
    well above the unweighted 30/62 and the window collapses (pr ≥ 0.30).
    """
    p_unweighted = (31 / 62, 1 / 62, 30 / 62)
    h0 = entropy_from_ratios(*(np.array([p]) for p in p_unweighted))[0]
    assert h0 == pytest.approx(0.69579, abs=1e-5)
    assert decay(np.array([h0]))[0] == pytest.approx(0.34790, abs=1e-5)

    bits = [0] * 32 + [1] * 31
    closes = _closes_from_bits(bits)[None, :]
    r = damp(closes, backend="numpy")
    pr = 1.0 - r.stability[0]
    assert pr > 30 / 62
    assert bool(r.collapse[0])
    assert bool(r.converged[0])
    assert r.iterations[0] > 1
    assert r.lam[0] != pytest.approx(0.34790, abs=1e-3)
    # b_0 = 0 and b_j = 1 for j ≥ 32: V = Σ_{j=32..62} e^(−λ·j) at the final λ.
    lam = float(r.lam[0])
    assert r.value[0] == pytest.approx(sum(math.exp(-lam * j) for j in range(32, 63)), rel=1e-12)
    _assert_matches_reference(closes)


def test_up_up_down_pattern() -> None:
    """Bits (1,1,0) repeated: transitions R,F,F,… → RUPTURE×21, FLIP×41 over j = 0..61."""
    bits = [1, 1, 0] * 21
    closes = _closes_from_bits(bits)[None, :]
    r = damp(closes, backend="numpy")
    assert 1.0 - r.stability[0] == pytest.approx(21 / 62, abs=0.05)
    assert bool(r.collapse[0])
    _assert_matches_reference(closes)


def test_minimal_window_w3() -> None:
    """W = 3: two bits, one transition; every output still defined."""
    closes = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 1.0], [2.0, 1.0, 2.0]])
    _assert_matches_reference(closes)
    r = damp(closes, backend="numpy")
    np.testing.assert_array_equal(r.iterations, [1, 1, 1, 1])


# --------------------------------------------------------------------------- vs reference


# 300 rows: more than the kernel's small-batch cut-over (256), so the Horner loop, the
# active-set compaction and the stepwise trajectory are the code paths being checked;
# 40 rows: the small-batch paths (exp weight matrices).
@pytest.mark.parametrize("n", [40, 300])
@pytest.mark.parametrize("w", [3, 4, 9, 33, 64, 100])
def test_matches_scalar_reference_on_random_walks(w: int, n: int) -> None:
    _assert_matches_reference(_random_walks(seed=w, n=n, w=w))


@pytest.mark.parametrize("n", [40, 300])
def test_matches_scalar_reference_on_gbm_with_jumps(n: int) -> None:
    _assert_matches_reference(_gbm_with_jumps(seed=7, n=n))


def test_matches_scalar_reference_long_window() -> None:
    """W = 1500: old weights underflow to 0 without harm."""
    _assert_matches_reference(_random_walks(seed=8, n=5, w=1500))


def test_matches_scalar_reference_with_custom_library() -> None:
    rng = np.random.default_rng(3)
    lib = rng.normal(size=(5, W - 1))
    lib[2] = 0.0  # a zero library path scores 0 and does not break the others
    _assert_matches_reference(_random_walks(seed=11, n=50), lib)


def test_rows_are_independent_of_batch_and_chunking() -> None:
    """Active-mask iteration: a row's result does not depend on its neighbours."""
    closes = _random_walks(seed=5, n=500)
    whole = damp(closes, backend="numpy")
    chunked = damp(closes, backend="numpy", chunk_rows=7)
    for f in (*FLOAT_FIELDS, "iterations", "converged", "collapse"):
        np.testing.assert_allclose(getattr(chunked, f), getattr(whole, f), rtol=0, atol=1e-13)
    for i in (0, 123, 499):
        single = damp(closes[i : i + 1], backend="numpy")
        for f in (*FLOAT_FIELDS, "iterations"):
            assert getattr(single, f)[0] == pytest.approx(getattr(whole, f)[i], abs=1e-13)


# --------------------------------------------------------------------------- properties

_walk_steps = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 40), st.integers(3, 80)),
    elements=st.one_of(
        st.floats(-5.0, 5.0, allow_nan=False, allow_subnormal=False),
        st.sampled_from([0.0, 1.0, -1.0]),
    ),
)


@settings(max_examples=150, deadline=None)
@given(steps=_walk_steps)
def test_output_ranges(steps: npt.NDArray[np.float64]) -> None:
    closes = 1000.0 + np.cumsum(steps, axis=1)
    r = damp(closes, backend="numpy")
    n = closes.shape[0]
    assert len(r) == n
    assert np.all((r.entropy >= 0.05) & (r.entropy <= 1.0))
    assert np.all((r.coherence >= 0.0) & (r.coherence <= 0.95 + 1e-15))
    assert np.all((r.stability >= 0.0) & (r.stability <= 1.0))
    assert np.all((r.lam >= 0.01) & (r.lam <= 1.0))
    assert np.all((r.confidence >= 0.0) & (r.confidence <= 1.0))
    assert np.all((r.iterations >= 1) & (r.iterations <= 32))
    assert np.all(np.isfinite(r.value))
    np.testing.assert_array_equal(r.collapse, (1.0 - r.stability) >= 0.30 - 1e-12)
    assert r.iterations.dtype.kind == "i"
    assert r.converged.dtype == np.bool_
    assert r.collapse.dtype == np.bool_


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 400))
def test_random_walks_converge_within_32(seed: int, n: int) -> None:
    r = damp(_random_walks(seed, n), backend="numpy")
    assert bool(r.converged.all())
    assert int(r.iterations.max()) <= 32


def test_large_random_walk_batch_converges() -> None:
    r = damp(_random_walks(seed=2024, n=20_000), backend="numpy")
    assert bool(r.converged.all())


@settings(max_examples=100, deadline=None)
@given(
    h=hnp.arrays(
        np.float64, st.integers(2, 200), elements=st.floats(0.0, 1.0, allow_subnormal=False)
    )
)
def test_initial_lambda_monotonic_in_entropy(h: npt.NDArray[np.float64]) -> None:
    """λ0 = clamp(0.30·H + 0.20·(1 − C)) is non-decreasing in the (unweighted) entropy."""
    hs = np.sort(np.clip(h, 0.05, 1.0))
    lam = decay(hs)
    assert np.all(np.diff(lam) >= 0)
    assert np.all((lam >= 0.01) & (lam <= 1.0))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(
        st.tuples(st.integers(0, 62), st.integers(0, 62)).filter(lambda c: c[0] + c[1] <= 62),
        min_size=2,
        max_size=30,
    )
)
def test_initial_lambda_monotonic_over_transition_counts(counts: list[tuple[int, int]]) -> None:
    """Same property on entropies that come from real transition counts (p = n/T)."""
    n0 = np.array([c[0] for c in counts], dtype=np.float64)
    nr = np.array([c[1] for c in counts], dtype=np.float64)
    h = entropy_from_ratios(n0 / 62, (62 - n0 - nr) / 62, nr / 62)
    order = np.argsort(h, kind="stable")
    assert np.all(np.diff(decay(h)[order]) >= 0)


@pytest.mark.parametrize("make", [_random_walks, _gbm_with_jumps])
def test_float32_within_1e4_of_float64(make: Any) -> None:
    closes = make(9, 5_000)
    r64 = damp(closes, backend="numpy", dtype="float64")
    r32 = damp(closes, backend="numpy", dtype="float32")
    for f in FLOAT_FIELDS:
        assert getattr(r32, f).dtype == np.float32
        np.testing.assert_allclose(getattr(r32, f), getattr(r64, f), rtol=0, atol=1e-4, err_msg=f)
    assert int(np.abs(r32.iterations - r64.iterations).max()) <= 1
    clear = np.abs((1.0 - r64.stability) - 0.30) > 1e-4
    np.testing.assert_array_equal(r32.collapse[clear], r64.collapse[clear])


@pytest.mark.parametrize("make", [_random_walks, _gbm_with_jumps])
def test_sum_methods_agree(make: Any) -> None:
    """``direct`` (exp per weight, the CPU twin of the cupy ``fused`` kernel) vs ``horner``.

    This is the numpy-vs-cupy parity contract rehearsed on the CPU: 1e-12 in float64, and
    in float32 1e-4 with iteration counts at most one apart.
    """
    closes = make(21, 5_000)
    for dtype, atol in (("float64", 1e-12), ("float32", 1e-4)):
        horner = damp_arrays(closes, backend="numpy", dtype=dtype, method="horner")
        direct = damp_arrays(closes, backend="numpy", dtype=dtype, method="direct")
        for f in FLOAT_FIELDS:
            np.testing.assert_allclose(direct[f], horner[f], rtol=0, atol=atol, err_msg=f)
        diff = np.abs(direct["iterations"] - horner["iterations"])
        assert int(diff.max()) <= (0 if dtype == "float64" else 1)


def test_method_validation() -> None:
    with pytest.raises(ValueError, match="not available"):
        damp_arrays(_random_walks(0, 2), backend="numpy", method="fused")
    with pytest.raises(ValueError, match="not available"):
        damp_arrays(_random_walks(0, 2), backend="numpy", method="simd")
    with pytest.raises(ValueError, match="resolved name"):
        damp_arrays(_random_walks(0, 2), backend="auto")


# --------------------------------------------------------------------------- confidence


def test_zero_path_confidence_zero_with_any_library() -> None:
    rng = np.random.default_rng(1)
    lib = rng.normal(size=(8, W - 1))
    falling = np.array([100.0 - i for i in range(W)])[None, :]
    assert damp(falling, lib, backend="numpy").confidence[0] == 0.0


def test_confidence_is_best_cosine_clipped() -> None:
    """A library holding the row's own path scores 1; a negated copy scores 0 (clipped)."""
    closes = _random_walks(seed=4, n=3)
    first = damp(closes, backend="numpy")
    own = np.stack([_reference_path(closes[i], float(first.lam[i])) for i in range(3)])
    assert damp(closes, own, backend="numpy").confidence == pytest.approx(np.ones(3), abs=1e-12)
    assert damp(closes[:1], -own[:1], backend="numpy").confidence[0] == 0.0


def _reference_path(closes: npt.NDArray[np.float64], lam: float) -> npt.NDArray[np.float64]:
    bits = (np.diff(closes) > 0).astype(np.float64)
    t = bits.size - 1
    a = np.cumsum((bits[1:] - bits[0]) * np.exp(-lam * np.arange(1, t + 1)))
    return np.concatenate([[bits[0]], a])


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("library", "match"),
    [
        (np.ones(W - 1), "2-D"),
        (np.ones((2, W - 2)), "length T\\+1"),
        (np.ones((2, W)), "length T\\+1"),
        (np.ones((0, W - 1)), "at least one"),
        (np.full((2, W - 1), np.nan), "non-finite"),
    ],
)
def test_library_shape_validation(library: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        damp(_random_walks(0, 2), library, backend="numpy")


@pytest.mark.parametrize(
    ("closes", "match"),
    [
        (np.ones(W), "2-D"),
        (np.ones((2, 2)), "W must be >= 3"),
        (np.array([[1.0, np.nan, 2.0, 3.0]]), "non-finite"),
        (np.array([[1.0, 2.0, 3.0]], dtype=complex), "real numeric"),
    ],
)
def test_closes_validation(closes: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        damp(closes, backend="numpy")


def test_dtype_validation() -> None:
    with pytest.raises(ValueError, match="float64' or 'float32"):
        damp(_random_walks(0, 2), backend="numpy", dtype="float16")
    assert damp(_random_walks(0, 2), backend="numpy", dtype=np.float32).lam.dtype == np.float32


def test_default_library_rows() -> None:
    lib = default_library(4)
    i = np.arange(5)
    np.testing.assert_allclose(lib[0], np.exp(-0.1 * i))
    np.testing.assert_allclose(lib[1], i / 4)
    np.testing.assert_allclose(lib[2], np.sin(2 * np.pi * i / 5))


def test_empty_batch_and_integer_closes() -> None:
    r = damp(np.empty((0, W)), backend="numpy")
    assert len(r) == 0
    assert all(getattr(r, f).shape == (0,) for f in FLOAT_FIELDS)
    ints = np.arange(W, dtype=np.int64)[None, :]
    assert damp(ints, backend="numpy").stability[0] == pytest.approx(0.0, abs=1e-15)


# --------------------------------------------------------------------------- backends / result


def test_backend_selection() -> None:
    assert available_backends()[0] == "numpy"
    assert resolve_backend("numpy") == "numpy"
    assert resolve_backend("auto") in available_backends()
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("tpu")
    if "cupy" not in available_backends():
        assert resolve_backend("auto") == "numpy"
        with pytest.raises(BackendUnavailableError, match="cupy"):
            damp(_random_walks(0, 2), backend="cupy")


def test_result_is_frozen_numpy_and_carries_metadata() -> None:
    r = damp(_random_walks(0, 4), backend="auto", library_version="v7")
    assert r.library_version == "v7"
    assert r.backend == resolve_backend("auto")
    assert all(isinstance(getattr(r, f), np.ndarray) for f in FLOAT_FIELDS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.library_version = "v8"  # type: ignore[misc]
    assert damp(_random_walks(0, 4), backend="numpy").library_version is None
