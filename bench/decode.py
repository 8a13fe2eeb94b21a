"""Micro-benchmark of `schemas.batch` decoding: one record cold, and again from the cache.

    python -m bench.decode --events 512 --rounds 300

Per record of `--events` trades (as collectors encode them): a cold decode through the
cache (hash, parse, insert), a hit with equal bytes in a new object (what a consumer of
another topic gets: hash + memcmp + a fresh batch object), a hit with the very same bytes
object (Faust hands one object to every agent of a topic: its hash is cached), and
hashing the bytes alone. Figures are the minimum over `--rounds` (least disturbed by other
load), in µs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator

import numpy as np

from schemas.batch import DecodeCache, MarketEventBatch
from schemas.events import Kind


def record(n: int, stamp: int) -> bytes:
    rng = np.random.default_rng(stamp)
    ts = 1_750_000_000_000_000_000 + np.cumsum(rng.integers(1_000, 5_000_000, n))
    batch = MarketEventBatch.from_columns(
        Kind.TRADE,
        "binance",
        "BTC-USDT",
        {
            "ts_event": ts,
            "ts_recv": ts + rng.integers(100_000, 3_000_000, n),
            "price": np.round(67_000 + rng.normal(0, 20, n).cumsum(), 2),
            "size": np.round(rng.exponential(0.05, n), 5),
            "side": rng.choice([-1, 1], n),
            "trade_id": 4_000_000_000 + np.arange(n),
        },
    )
    return batch.encode(collector_out=stamp)


def best_us(step: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        step()
        best = min(best, time.perf_counter_ns() - started)
    return best / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    cache = DecodeCache(max_entries=args.rounds + 1, max_bytes=1 << 34)
    distinct: Iterator[bytes] = iter([record(args.events, s) for s in range(args.rounds)])
    cold = best_us(lambda: cache.decode(next(distinct)), args.rounds)
    data = record(args.events, args.rounds)
    cache.decode(data)
    copies = iter([bytes(bytearray(data)) for _ in range(args.rounds)])
    hit_copy = best_us(lambda: cache.decode(next(copies)), args.rounds)
    hit_same = best_us(lambda: cache.decode(data), args.rounds)
    to_hash = iter([bytes(bytearray(data)) for _ in range(args.rounds)])
    hashing = best_us(lambda: hash(next(to_hash)), args.rounds)
    doc = {
        "events": args.events,
        "record_bytes": len(data),
        "cold_decode_us": round(cold, 1),
        "hit_equal_bytes_us": round(hit_copy, 1),
        "hit_same_object_us": round(hit_same, 1),
        "hash_us": round(hashing, 1),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for name, value in doc.items():
            print(f"{name:<20}{value:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
