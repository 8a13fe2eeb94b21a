"""Path-library training, the library and signal codecs, and the damping agent's bar state."""

from __future__ import annotations

import numpy as np
import pytest

from agents.damping import LibraryHolder
from kernels.damping import damp, default_library
from kernels.damping_state import InstrumentState, Series, Window, to_signals
from schemas.batch import CodecError, MarketEventBatch
from schemas.events import Kind
from schemas.signal import Signal, decode_signal
from streams.model.library import (
    Library,
    damped_paths,
    decode_library,
    parse_since,
    rolling_windows,
    spherical_kmeans,
    train,
)

W = 16


def _walks(seed: int, instruments: int = 3, n: int = 400) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"sim:I{i}-USD": 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
        for i in range(instruments)
    }


def test_training_is_deterministic_for_a_seed() -> None:
    data = _walks(1)
    a = train(data, k=8, window=W, seed=42, created_at=1_700_000_000_000_000_000)
    b = train(data, k=8, window=W, seed=42, created_at=1_700_000_000_000_000_000)
    assert np.array_equal(a.paths, b.paths)
    assert a.version == b.version
    assert a.version.startswith("20231114T221320Z-")
    assert a.params == b.params
    c = train(data, k=8, window=W, seed=43, created_at=1_700_000_000_000_000_000)
    assert not np.array_equal(a.paths, c.paths)
    assert c.version.split("-")[-1] != a.version.split("-")[-1]


def test_training_gives_k_unit_centroids_of_length_t_plus_1() -> None:
    lib = train(_walks(2), k=8, window=W, seed=0)
    assert lib.paths.shape == (8, W - 1)
    assert lib.window == W and lib.k == 8
    np.testing.assert_allclose(np.linalg.norm(lib.paths, axis=1), 1.0, rtol=1e-12)
    p = lib.params
    assert p["instruments"] == 3 and p["windows_total"] == 3 * (400 - W + 1)
    assert p["windows_used"] + p["zero_paths_dropped"] == p["windows_total"]
    assert sum(p["cluster_sizes"]) == p["windows_used"]
    assert p["cluster_sizes"] == sorted(p["cluster_sizes"], reverse=True)
    assert 0 <= p["inertia"] < p["windows_used"]
    # The trained library plugs straight into the kernel.
    closes = np.stack([rolling_windows(c, W)[-1] for c in _walks(2).values()])
    res = damp(closes, lib.paths, backend="numpy", library_version=lib.version)
    assert res.library_version == lib.version and np.all(res.confidence > 0)


def test_max_windows_subsamples_deterministically() -> None:
    data = _walks(3)
    a = train(data, k=4, window=W, seed=5, max_windows=200, created_at=0)
    b = train(data, k=4, window=W, seed=5, max_windows=200, created_at=0)
    assert a.params["windows_total"] == 3 * (400 - W + 1)
    assert a.params["windows_used"] + a.params["zero_paths_dropped"] == 200
    assert np.array_equal(a.paths, b.paths)


def test_spherical_kmeans_recovers_planted_clusters() -> None:
    rng = np.random.default_rng(9)
    k, d, per = 5, W - 1, 200
    planted = rng.normal(size=(k, d))
    planted /= np.linalg.norm(planted, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), per)
    x = planted[labels] + rng.normal(0, 0.05, size=(k * per, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(x))
    x, labels = x[order], labels[order]
    centers, sizes, rounds = spherical_kmeans(x, k, seed=1, iterations=100)
    match = planted @ centers.T  # (planted, found)
    assert np.all(match.max(axis=1) > 0.99), match
    assert sorted(np.argmax(match, axis=1).tolist()) == list(range(k))  # one each
    found = np.argmax(x @ centers.T, axis=1)
    for c in range(k):  # every planted cluster lands in exactly one found cluster
        assert len(set(found[labels == c].tolist())) == 1
    assert sizes.tolist() == [per] * k and rounds < 100


def test_empty_clusters_are_reseeded_and_too_few_paths_rejected() -> None:
    # Two distinct directions, k = 4: clusters must stay filled as long as paths allow.
    x = np.repeat(np.eye(3)[:2], [6, 2], axis=0)
    x[1] += [0, 0, 0.1]
    x[7] += [0, 0, -0.3]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centers, sizes, _ = spherical_kmeans(x, 4, seed=0, iterations=20)
    assert centers.shape == (4, 3) and np.isfinite(centers).all()
    assert sizes.sum() == len(x)
    again = spherical_kmeans(x, 4, seed=0, iterations=20)
    assert np.array_equal(centers, again[0])
    with pytest.raises(ValueError, match="at least k"):
        spherical_kmeans(x[:3], 4, seed=0, iterations=20)


def test_damped_paths_match_the_kernel() -> None:
    """Paths rebuilt from the kernel's λ give exactly the kernel's confidence."""
    closes = np.stack([rolling_windows(c, W)[i] for c in _walks(4).values() for i in (0, 50, 300)])
    paths = damped_paths(closes)
    lib = default_library(W - 2)
    unit = lib / np.linalg.norm(lib, axis=1, keepdims=True)
    norm = np.linalg.norm(paths, axis=1)
    cos = (paths / np.where(norm > 0, norm, 1)[:, None]) @ unit.T
    expected = damp(closes, backend="numpy")
    np.testing.assert_allclose(np.clip(cos.max(axis=1), 0, 1), expected.confidence, atol=1e-12)
    np.testing.assert_allclose(paths[:, -1], expected.value, atol=1e-12)


def test_library_codec_round_trip_and_validation() -> None:
    lib = train(_walks(5), k=4, window=W, seed=0)
    back = decode_library(lib.encode())
    assert back.version == lib.version and back.created_at == lib.created_at
    assert back.window == W and np.array_equal(back.paths, lib.paths)
    assert back.params == lib.params
    default = Library.default(W)
    assert default.version == "default" and default.paths.shape == (3, W - 1)
    bad = Library("x", 0, W, np.ones((2, W)), {})
    with pytest.raises(ValueError, match="paths must be"):
        decode_library(bad.encode())
    with pytest.raises(ValueError):
        decode_library(b'{"v": 2}')


def _signal(**over: object) -> Signal:
    fields: dict[str, object] = {
        "venue": "sim_binance",
        "symbol": "BTC-USDT",
        "timeframe": "1m",
        "ts": 1_700_000_040_000_000_000,
        "window": 64,
        "entropy": 0.93,
        "coherence": 0.07,
        "stability": 0.74,
        "lam": 0.2925,
        "value": -0.41,
        "confidence": 0.62,
        "iterations": 7,
        "converged": True,
        "collapse": False,
        "library_version": "default",
        "backend": "numpy",
        "ts_emit": 1_700_000_101_234_567_890,
    }
    fields.update(over)
    return Signal(**fields)  # type: ignore[arg-type]


def test_signal_codec_round_trip() -> None:
    s = _signal(value=1e-300, confidence=0.0)
    assert decode_signal(s.encode()) == s
    assert s.key == "sim_binance:BTC-USDT"
    doc = s.to_dict()
    assert doc["v"] == 1 and set(doc) == {"v", *Signal.__dataclass_fields__}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{nope", "malformed_json"),
        (b"[]", "malformed"),
        (b'{"v": 9}', "unknown_version"),
        (_signal().encode().replace(b'"converged":true', b'"converged":1'), "malformed"),
        (_signal().encode().replace(b'"iterations":7', b'"iterations":7.5'), "malformed"),
        (_signal().encode().replace(b'"venue":"sim_binance",', b""), "malformed"),
    ],
)
def test_signal_codec_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(CodecError) as err:
        decode_signal(data)
    assert err.value.reason == reason


def test_series_appends_corrects_and_ignores() -> None:
    w = 3
    s = Series()
    assert s.apply(0, 1.0, w) == [] and s.apply(60, 2.0, w) == []
    assert s.apply(120, 3.0, w) == [2]  # the first full window ends at index 2
    assert s.window_at(2, w) == [1.0, 2.0, 3.0]
    assert s.apply(120, 3.0, w) == []  # the same bar again changes nothing
    assert s.apply(180, 4.0, w) == [3]
    assert s.apply(240, 5.0, w) == [4]  # 5 bars = 2W-1 held
    assert s.apply(300, 6.0, w) == [4] and s.ts[0] == 60  # the oldest bar falls out
    # A correction of a held bar recomputes every held window that contains it.
    assert s.apply(180, 4.5, w) == [2, 3, 4]
    assert s.window_at(4, w) == [4.5, 5.0, 6.0]
    assert s.apply(0, 9.0, w) == []  # older than the held history
    # A late bar for a minute not held yet is inserted in order.
    t = Series()
    for ts in (0, 60, 180, 240):
        t.apply(ts, float(ts), w)
    assert t.apply(120, 1.0, w) == [2, 3, 4] and t.ts == [0, 60, 120, 180, 240]
    state = InstrumentState({"1m": t}, (1, 42))
    back = InstrumentState.decode(state.encode())
    assert back.src == (1, 42) and back.series["1m"] == t


def test_a_bar_record_folds_in_time_order_into_windows() -> None:
    w = 3
    ts = [180, 0, 120, 60]  # out of order: folded by open time
    batch = MarketEventBatch.from_columns(
        Kind.BAR,
        "sim",
        "A-B",
        {
            "ts_event": ts,
            "ts_recv": ts,
            **{f: [float(t) for t in ts] for f in ("open", "high", "low", "close")},
            "volume": [1.0] * 4,
        },
        timeframe="5m",
    )
    state = InstrumentState()
    windows = state.fold(batch, w)
    assert windows == [
        Window("sim", "A-B", "5m", 120, [0.0, 60.0, 120.0]),
        Window("sim", "A-B", "5m", 180, [60.0, 120.0, 180.0]),
    ]
    assert state.series["5m"].ts == [0, 60, 120, 180]
    assert state.fold(batch, w) == []  # the same bars again change nothing


def test_parse_since() -> None:
    from datetime import UTC, datetime

    now = datetime(2025, 1, 8, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2025, 1, 7, 22, 30, tzinfo=UTC)
    assert parse_since("2025-01-02T03:04:05") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_since("2025-01-02T03:04:05+01:00").utcoffset() is not None


def test_training_needs_history() -> None:
    with pytest.raises(ValueError, match="no history"):
        train({"sim:A-B": np.arange(5.0)}, k=2, window=W, seed=0)
    flat = {"sim:A-B": np.full(100, 7.0)}  # every path is zero: nothing to cluster
    with pytest.raises(ValueError, match="at least k"):
        train(flat, k=2, window=W, seed=0)


def test_library_holder_swaps_only_matching_new_libraries() -> None:
    holder = LibraryHolder(W)
    assert holder.current.version == "default"
    trained = train(_walks(6), k=4, window=W, seed=0)
    holder.swap(train(_walks(6), k=4, window=W + 1, seed=0))  # another window: ignored
    assert holder.current.version == "default"
    holder.swap(trained)
    assert holder.current is trained
    holder.swap(decode_library(trained.encode()))  # the same version again: kept as is
    assert holder.current is trained

    closes = rolling_windows(next(iter(_walks(6).values())), W)[:2]
    windows = [Window("sim", "A-B", "1m", 60 * i, row.tolist()) for i, row in enumerate(closes)]
    result = damp(closes, trained.paths, backend="numpy", library_version=trained.version)
    signals = to_signals(windows, result, W, 7)
    assert [s.ts for s in signals] == [0, 60]
    assert signals[1].confidence == result.confidence[1] and signals[1].window == W
    assert {s.library_version for s in signals} == {trained.version}
    assert {s.ts_emit for s in signals} == {7}
