"""Reference-path libraries for the damping confidence (docs/ARCHITECTURE.md#path-library): train,
store, publish, load.

Why: the built-in library (a decay, a ramp, a sine) says how much a window's damped path
looks like three textbook shapes; a library trained on the market's own history says how
much it looks like the paths that actually occur. `sepstream train` builds one from the 1m
bars in TimescaleDB, stores it in `path_library` and publishes it on the compacted
``md.model.paths`` topic, from which every worker hot-swaps (see `follow`).

Training (`train`), all NumPy, deterministic for a seed:

1. Windows: per instrument, every run of ``window`` (W) consecutive closes (bars in time
   order; a step of ``stride`` bars between window starts), exactly what the damping agent
   sees. With more than ``max_windows`` windows, that many are drawn without replacement
   (seeded) so memory stays bounded.
2. Paths: the damping kernel gives each window its converged λ; the damped path
   P = [b_0, A_1 … A_T], A_k = Σ_{j=1..k} (b_j − b_0)·e^(−λ·j) (length T+1 = W−1) is
   rebuilt from the bits and that λ, exactly as the kernel builds it.
3. Normalisation: each path is scaled to unit length. Confidence is a cosine similarity, so
   only a path's direction matters; zero paths (all bits 0) match nothing and are dropped.
4. Clustering: spherical k-means (k-means on the unit sphere; similarity = cosine).
   k-means++ seeding with ``numpy.random.default_rng(seed)`` (squared cosine distance
   weights), then Lloyd iterations: assign each path to its most similar centroid, set each
   centroid to the normalised sum of its members, until no assignment changes or
   ``iterations`` rounds. A cluster left empty is re-seeded deterministically with the
   path that the current centroids fit worst (lowest best similarity; ties by index).
5. Result: k unit-length centroids ordered by cluster size (largest first, ties by
   index), plus the inertia Σ (1 − best cosine) over the paths.

Fewer distinct paths than k leave some centroids equal; fewer paths than k is an error.

Version: ``<UTC creation time YYYYmmddTHHMMSSZ>-<first 12 hex of sha256(paths, window, k)>``,
so equal content has an equal hash part and the time part orders versions.

Wire format of md.model.paths (key ``paths``; compacted, so the topic keeps the newest)::

    {"v": 1, "version": "20250101T000000Z-0123456789ab", "created_at": <ns>,
     "window": 64, "params": {...}, "paths": [[...T+1 floats...], ... k rows]}
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import numpy as np
import numpy.typing as npt
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from kernels.damping import damp, default_library
from schemas.ddl import check_ident, signals_ddl
from streams.kafka.admin import ensure_compacted_topic
from streams.kafka.clients import kafka_client_kwargs, start_client, stop_consumer
from streams.settings import Settings
from streams.topics import MODEL_TOPIC

log = structlog.get_logger(__name__)

LIBRARY_FORMAT: Final = 1
MODEL_KEY: Final = b"paths"
DEFAULT_VERSION: Final = "default"
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Library:
    """A (k, T+1) matrix of reference paths with its provenance."""

    version: str
    created_at: int  # ns since the epoch, UTC
    window: int  # W the paths were built for (path length W-1)
    paths: F64
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def default(cls, window: int) -> Library:
        """The built-in §5.6 library for windows of W closes, version ``default``."""
        return cls(DEFAULT_VERSION, 0, window, default_library(window - 2), {"kind": "default"})

    @property
    def k(self) -> int:
        return int(self.paths.shape[0])

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": LIBRARY_FORMAT,
                "version": self.version,
                "created_at": self.created_at,
                "window": self.window,
                "params": self.params,
                "paths": self.paths,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )


def decode_library(data: bytes) -> Library:
    """Parse a md.model.paths value; raises ValueError on anything a worker must not use."""
    doc = orjson.loads(data)
    if not isinstance(doc, dict) or doc.get("v") != LIBRARY_FORMAT:
        raise ValueError("not a path library record of format v1")
    version, created, window = doc.get("version"), doc.get("created_at"), doc.get("window")
    if not isinstance(version, str) or not version:
        raise ValueError("library version must be a non-empty string")
    if not isinstance(created, int) or not isinstance(window, int) or window < 3:
        raise ValueError("created_at and window (>= 3) must be integers")
    paths = np.asarray(doc.get("paths"), dtype=np.float64)
    if paths.ndim != 2 or paths.shape[0] < 1 or paths.shape[1] != window - 1:
        raise ValueError(f"paths must be (k, {window - 1}), got shape {paths.shape}")
    if not np.isfinite(paths).all():
        raise ValueError("paths contain non-finite values")
    params = doc.get("params")
    return Library(version, created, window, paths, params if isinstance(params, dict) else {})


# --------------------------------------------------------------------------- training


def damped_paths(windows: Any, *, backend: str = "numpy") -> F64:
    """(N, W) closes → (N, W-1) damped paths P at each window's converged λ (§5.4)."""
    closes = np.asarray(windows, dtype=np.float64)
    lam = damp(closes, backend=backend).lam
    bits = (closes[:, 1:] > closes[:, :-1]).astype(np.float64)  # (N, T+1): b_0..b_T
    t = bits.shape[1] - 1
    j = np.arange(1, t + 1, dtype=np.float64)
    steps = (bits[:, 1:] - bits[:, :1]) * np.exp(-lam[:, None] * j[None, :])
    paths: F64 = np.empty_like(bits)
    paths[:, 0] = bits[:, 0]
    paths[:, 1:] = np.cumsum(steps, axis=1)
    return paths


def rolling_windows(closes: Any, window: int, stride: int = 1) -> F64:
    """All length-`window` runs of consecutive closes, `stride` apart: (n_windows, window)."""
    arr = np.asarray(closes, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < window:
        return np.empty((0, window), dtype=np.float64)
    view = np.lib.stride_tricks.sliding_window_view(arr, window)[::stride]
    out: F64 = np.ascontiguousarray(view)
    return out


def _unit_rows(x: F64) -> F64:
    norm = np.sqrt(np.einsum("nk,nk->n", x, x))
    out: F64 = x / np.where(norm > 0, norm, 1.0)[:, None]
    return out


def _kmeans_pp(x: F64, k: int, rng: np.random.Generator) -> F64:
    """k-means++ seeding on the unit sphere with weights (1 − best cosine)²."""
    n = x.shape[0]
    centers = np.empty((k, x.shape[1]), dtype=np.float64)
    centers[0] = x[int(rng.integers(n))]
    best = x @ centers[0]
    for c in range(1, k):
        dist = np.clip(1.0 - best, 0.0, None) ** 2
        total = float(dist.sum())
        # Fewer distinct paths than k: nothing is left to prefer, take the worst-fit path.
        pick = int(rng.choice(n, p=dist / total)) if total > 0 else int(np.argmin(best))
        centers[c] = x[pick]
        np.maximum(best, x @ centers[c], out=best)
    return centers


def spherical_kmeans(x: F64, k: int, *, seed: int, iterations: int) -> tuple[F64, F64, int]:
    """Cluster unit rows `x`; returns (centroids, sizes, rounds run). See the module doc."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"need at least k={k} non-zero paths to train, got {n}")
    rng = np.random.default_rng(seed)
    centers = _kmeans_pp(x, k, rng)
    assign = np.full(n, -1, dtype=np.int64)
    rounds = 0
    while rounds < iterations:
        rounds += 1
        sims = x @ centers.T
        new = np.argmax(sims, axis=1)
        best = sims[np.arange(n), new]
        sizes = np.bincount(new, minlength=k)
        empty = np.flatnonzero(sizes == 0)
        if empty.size:
            worst = np.argsort(best, kind="stable")[: empty.size]
            new[worst] = empty  # each re-seeded cluster starts with one path
        if np.array_equal(new, assign):
            break
        assign = new
        order = np.argsort(assign, kind="stable")
        sizes = np.bincount(assign, minlength=k)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        filled = sizes > 0  # a re-seed can empty another cluster: that one keeps its centroid
        centers[filled] = _unit_rows(np.add.reduceat(x[order], starts[filled], axis=0))
    final = np.bincount(np.argmax(x @ centers.T, axis=1), minlength=k).astype(np.float64)
    return centers, final, rounds


def train(
    closes_by_instrument: Mapping[str, Any],
    *,
    k: int,
    window: int,
    seed: int,
    iterations: int = 100,
    stride: int = 1,
    max_windows: int | None = 200_000,
    created_at: int | None = None,
) -> Library:
    """Train a (k, W-1) library from each instrument's closes in time order (module doc)."""
    if k < 1 or window < 3 or stride < 1 or iterations < 1:
        raise ValueError("need k >= 1, window >= 3, stride >= 1 and iterations >= 1")
    per = [rolling_windows(c, window, stride) for c in closes_by_instrument.values()]
    used = [w for w in per if len(w)]
    windows = np.concatenate(used) if used else np.empty((0, window), dtype=np.float64)
    total = int(windows.shape[0])
    if total == 0:
        raise ValueError(f"no history to train on: no instrument has {window} bars")
    if max_windows is not None and total > max_windows:
        pick = np.random.default_rng([seed, 1]).choice(total, size=max_windows, replace=False)
        windows = windows[np.sort(pick)]
    paths = damped_paths(windows) if len(windows) else np.empty((0, window - 1))
    nonzero = np.any(paths != 0, axis=1)
    x = _unit_rows(paths[nonzero])
    centers, sizes, rounds = spherical_kmeans(x, k, seed=seed, iterations=iterations)
    order = np.lexsort((np.arange(k), -sizes))
    centers, sizes = centers[order], sizes[order]
    inertia = float(np.sum(1.0 - np.max(x @ centers.T, axis=1)))
    created = time.time_ns() if created_at is None else created_at
    params: dict[str, Any] = {
        "algorithm": "spherical-kmeans++",
        "k": k,
        "window": window,
        "seed": seed,
        "iterations": iterations,
        "rounds": rounds,
        "stride": stride,
        "max_windows": max_windows,
        "normalisation": "unit-l2",
        "instruments": len(used),
        "windows_total": total,
        "windows_used": int(x.shape[0]),
        "zero_paths_dropped": int((~nonzero).sum()),
        "inertia": inertia,
        "cluster_sizes": [int(s) for s in sizes],
    }
    return Library(version_for(centers, window, created), created, window, centers, params)


def version_for(paths: F64, window: int, created_at: int) -> str:
    """``<UTC time>-<content hash>``: equal content, equal hash; later time, later version."""
    digest = hashlib.sha256()
    digest.update(f"{window}:{paths.shape[0]}:".encode())
    digest.update(np.ascontiguousarray(paths, dtype="<f8").tobytes())
    stamp = datetime.fromtimestamp(created_at / 1e9, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{digest.hexdigest()[:12]}"


# --------------------------------------------------------------------------- storage


_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``/``12h``/``30m``/``2w`` ago, or an ISO-8601 time (UTC when no offset is given)."""
    match = _RELATIVE.match(text.strip())
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    parsed = datetime.fromisoformat(text.strip())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def load_closes(
    conn: asyncpg.Connection, schema: str, *, since: datetime | None, timeframe: str = "1m"
) -> dict[str, F64]:
    """Closes per ``venue:symbol`` from the bars table, oldest first (none: no table yet)."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{check_ident(schema)}.bars"):
        return {}
    rows = await conn.fetch(
        f"SELECT venue, symbol, array_agg(close ORDER BY ts) AS closes "
        f"FROM {check_ident(schema)}.bars WHERE timeframe = $1 AND ts >= $2 "
        f"GROUP BY venue, symbol ORDER BY venue, symbol",
        timeframe,
        since or datetime(1970, 1, 1, tzinfo=UTC),
    )
    return {f"{r['venue']}:{r['symbol']}": np.asarray(r["closes"], np.float64) for r in rows}


async def store(conn: asyncpg.Connection, schema: str, library: Library) -> None:
    """Insert into `path_library` (idempotent: the same version twice is one row)."""
    s = check_ident(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sepstream-ddl'))")
        await conn.execute(signals_ddl(s))
    await conn.execute(
        f"INSERT INTO {s}.path_library (created_at, version, params, paths) "
        f"VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (version, created_at) DO NOTHING",
        datetime.fromtimestamp(library.created_at / 1e9, UTC),
        library.version,
        orjson.dumps({**library.params, "window": library.window}).decode(),
        library.paths.tolist(),
    )


async def load_latest(conn: asyncpg.Connection, schema: str) -> Library | None:
    """The newest stored library, or None when none was stored (or no table yet)."""
    s = check_ident(schema)
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{s}.path_library"):
        return None
    row = await conn.fetchrow(
        f"SELECT created_at, version, params, paths FROM {s}.path_library "
        f"ORDER BY created_at DESC, version DESC LIMIT 1"
    )
    if row is None:
        return None
    params = orjson.loads(row["params"])
    paths = np.asarray(row["paths"], dtype=np.float64)
    created = row["created_at"]
    ns = int(created.timestamp()) * 1_000_000_000 + created.microsecond * 1000
    return Library(row["version"], ns, int(params["window"]), paths, params)


# --------------------------------------------------------------------------- the topic


async def ensure_model_topic(settings: Settings) -> str:
    """Create md.model.paths compacted with one partition if it is missing; returns its name."""
    return await ensure_compacted_topic(settings, MODEL_TOPIC)


async def publish(settings: Settings, library: Library) -> None:
    """Publish on the compacted model topic (key ``paths``) and wait for the broker's ack."""
    topic = await ensure_model_topic(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=False,
        max_request_size=4_194_304,
        **kafka_client_kwargs(settings),
    )
    try:
        await start_client(producer)
        await producer.send_and_wait(topic, key=MODEL_KEY, value=library.encode())
    finally:
        await producer.stop()


async def follow(
    settings: Settings,
    apply: Callable[[Library], None],
    ready: asyncio.Event,
    *,
    catch_up_s: float = 3.0,
) -> None:
    """Feed every library published on md.model.paths to `apply`, forever.

    Not a consumer group: every worker must see every library, and a restarted one must
    find the newest again, so this reads the (compacted, small) topic from its beginning,
    applies only the newest record found while catching up, then sets `ready` and applies
    each new record as it comes. Broker errors are retried; `ready` is set on the first
    error too, so damping never waits on a broken model topic (it keeps its library).
    """
    delay = 0.5
    while True:
        consumer: AIOKafkaConsumer | None = None
        try:
            topic = await ensure_model_topic(settings)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=settings.kafka_bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=4_194_304,
                **kafka_client_kwargs(settings),
            )
            await start_client(consumer)
            parts = consumer.partitions_for_topic(topic) or {0}
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            began = asyncio.get_running_loop().time()
            newest: Library | None = None
            while True:
                batch = await consumer.getmany(*tps, timeout_ms=500)
                for records in batch.values():
                    for rec in records:
                        lib = _decode_record(rec.key, rec.value)
                        if lib is None:
                            continue
                        if ready.is_set():
                            apply(lib)
                        else:
                            newest = lib
                if not ready.is_set() and await _caught_up(consumer, tps, batch, began, catch_up_s):
                    if newest is not None:
                        apply(newest)
                    ready.set()
                delay = 0.5
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("model topic follower failed, retrying", error=repr(exc), in_s=delay)
            ready.set()
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)
        finally:
            if consumer is not None:
                await stop_consumer(consumer)


async def _caught_up(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    batch: Mapping[TopicPartition, list[Any]],
    began: float,
    catch_up_s: float,
) -> bool:
    """At the high-water mark of every partition, or nothing came and time is up."""
    marks = [consumer.highwater(tp) for tp in tps]
    if all(m is not None for m in marks):
        positions = [await consumer.position(tp) for tp in tps]
        if all(p >= m for p, m in zip(positions, marks, strict=True)):
            return True
    quiet = not any(batch.values())
    return quiet and asyncio.get_running_loop().time() - began > catch_up_s


def _decode_record(key: bytes | None, value: bytes | None) -> Library | None:
    if key != MODEL_KEY or value is None:
        return None  # another key, or a tombstone
    try:
        return decode_library(value)
    except (ValueError, orjson.JSONDecodeError) as exc:
        log.warning("ignoring an unreadable path library record", error=str(exc))
        return None
