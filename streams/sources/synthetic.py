"""The built-in synthetic market: realistic-looking trades, deterministic for a seed.

Why: demos, tests and benchmarks need a tick stream without a network or an exchange
account, and a *replayable* one. The same seed and start give byte-identical events, so a
second run is a redelivery that the pipeline deduplicates, not new data. Venues are named
``sim_*`` so fake rows never mix with a real venue's rows in storage.

Model (vectorised numpy, `np.random.Generator(PCG64(seed))`, one spawned stream per instrument):

- Arrivals: a Markov-modulated Poisson process shared by the whole market, alternating calm
  and burst regimes (exponential durations, burst intensity 8x calm). Regime lengths are set
  in expected events (a calm spell ~3000 market events, a burst ~600), so the stream has the
  same texture at any `rate_per_s`. Given an instrument's event count, its arrival times are
  i.i.d. with density ∝ intensity, drawn as sorted uniforms mapped through the inverse
  cumulative intensity; this gives exactly the requested count inside the window.
- Mid: GBM in calendar time with volatility raised 2.5x in bursts (scaled so `annual_vol` is
  the long-run average) plus compound-Poisson log-normal jumps, which also cluster in bursts.
- Trade price: the ask for a buying aggressor, the bid for a selling one, with the bid/ask
  `spread_bps` wide around the mid and snapped outwards to the tick grid (so the quoted spread
  is never narrower than `spread_bps`, and at least one tick).
- Aggressor side correlates with the mid's shock (buyers lift the price).
- Sizes: log-normal with mean `mean_size`, rounded up to the lot grid (never zero).
- `ts_recv` = `ts_event` + a log-normal venue latency (median `latency_ms`, always > 0).

Bit-for-bit reproducibility holds on one machine and numpy version; numpy may use different
SIMD `exp`/`log` code on other CPUs, which can move a last-ulp difference across a tick.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from schemas.events import NS_PER_S, SYMBOL_RE, VENUE_RE, Kind

log = structlog.get_logger(__name__)

HOUR_NS: Final = 3600 * NS_PER_S
_YEAR_NS: Final = 365.25 * 86400 * NS_PER_S
_DAY_NS: Final = 86400 * NS_PER_S
_CALM_EVENTS: Final = 3000.0  # mean calm spell, in expected market events
_BURST_EVENTS: Final = 600.0  # mean burst, in expected market events (at calm intensity)
_BURST_INTENSITY: Final = 8.0  # arrival intensity in a burst relative to calm
_BURST_VOL: Final = 2.5  # volatility in a burst relative to calm
_SIDE_RHO: Final = 0.5  # correlation of the aggressor side with the mid's shock
_LATENCY_SIGMA: Final = 0.5  # log-normal shape of the venue → collector latency
_SLICE_EVENTS: Final = 4096.0  # expected events per produce() slice when flat out
_PACE_TICK_S: Final = 0.01  # wall-clock granularity of pacing sleeps
_MAX_WINDOW_NS: Final = 100 * 366 * 86400 * NS_PER_S
_MAX_START_NS: Final = 2**62  # start + window (+ latency) stays inside int64

Columns = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Instrument:
    """One simulated instrument; `weight` is its share of the market's events."""

    venue: str
    symbol: str
    price: float  # starting mid
    annual_vol: float  # long-run annualised volatility of the mid (diffusion part)
    spread_bps: float  # quoted bid/ask spread around the mid, basis points
    mean_size: float  # mean trade size in base units
    tick_size: float = 0.01
    lot_size: float = 1e-8
    weight: float = 1.0
    jumps_per_day: float = 3.0
    jump_std: float = 0.004  # std of a log-price jump
    size_sigma: float = 1.0  # log-normal shape of trade sizes
    latency_ms: float = 2.0  # median ts_recv - ts_event
    sequenced: bool = False  # the venue numbers its messages (seq column) or not (-1)

    def __post_init__(self) -> None:
        if not VENUE_RE.match(self.venue):
            raise ValueError(f"venue {self.venue!r} is not lower-case [a-z][a-z0-9_]*")
        if not SYMBOL_RE.match(self.symbol):
            raise ValueError(f"symbol {self.symbol!r} is not BASE-QUOTE upper case")
        positive = {
            "price": self.price,
            "mean_size": self.mean_size,
            "tick_size": self.tick_size,
            "lot_size": self.lot_size,
            "weight": self.weight,
        }
        non_negative = {
            "annual_vol": self.annual_vol,
            "spread_bps": self.spread_bps,
            "jumps_per_day": self.jumps_per_day,
            "jump_std": self.jump_std,
            "size_sigma": self.size_sigma,
            "latency_ms": self.latency_ms,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{self.venue}:{self.symbol}: {name} must be > 0, got {value}")
        for name, value in non_negative.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{self.venue}:{self.symbol}: {name} must be >= 0, got {value}")


DEFAULT_INSTRUMENTS: Final[tuple[Instrument, ...]] = (
    Instrument("sim_binance", "BTC-USDT", 65_000.0, 0.60, 1.0, 0.05,
               tick_size=0.01, lot_size=1e-5, weight=3.0, latency_ms=3.0),
    Instrument("sim_binance", "ETH-USDT", 3_200.0, 0.75, 1.5, 0.8,
               tick_size=0.01, lot_size=1e-4, weight=2.0, latency_ms=3.0),
    Instrument("sim_binance", "SOL-USDT", 150.0, 1.00, 3.0, 12.0,
               tick_size=0.01, lot_size=1e-3, weight=1.5, latency_ms=3.0),
    Instrument("sim_coinbase", "BTC-USD", 65_010.0, 0.60, 1.2, 0.04,
               tick_size=0.01, lot_size=1e-8, weight=1.5, latency_ms=5.0, sequenced=True),
    Instrument("sim_coinbase", "ETH-USD", 3_201.0, 0.75, 2.0, 0.6,
               tick_size=0.01, lot_size=1e-8, weight=1.0, latency_ms=5.0, sequenced=True),
    Instrument("sim_kraken", "BTC-EUR", 60_000.0, 0.60, 2.0, 0.03,
               tick_size=0.1, lot_size=1e-8, weight=0.7, latency_ms=8.0, sequenced=True),
    Instrument("sim_kraken", "XRP-EUR", 0.55, 0.90, 8.0, 900.0,
               tick_size=0.00001, lot_size=1e-8, weight=0.5, latency_ms=8.0, sequenced=True),
)  # fmt: skip


class EventSink(Protocol):
    """What the sources feed: `streams.kafka.producer.BatchingProducer` (or a test double)."""

    async def add(
        self,
        kind: Kind,
        venue: str,
        symbol: str,
        columns: dict[str, Any],
        *,
        timeframe: str | None = None,
        reason: str | None = None,
    ) -> None: ...


def window_ns(events: int, rate_per_s: float) -> int:
    """Length of the simulated range: `events / rate_per_s` seconds (at least 1 ns)."""
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    duration = max(1, math.floor(events * NS_PER_S / rate_per_s))
    if duration > _MAX_WINDOW_NS:
        raise ValueError(f"{events} events at {rate_per_s}/s span more than a century")
    return duration


def default_window(events: int, rate_per_s: float, now_ns: int) -> int:
    """A start such that the range ends on the last full hour at or before `now_ns`.

    Two runs within the same hour then generate identical events (replays deduplicate),
    and the whole range lies in the past (validation rejects future timestamps).
    """
    end = now_ns - now_ns % HOUR_NS
    return end - window_ns(events, rate_per_s)


def generate(
    seed: int,
    events: int,
    *,
    start_ns: int,
    rate_per_s: float = 100.0,
    instruments: Sequence[Instrument] = DEFAULT_INSTRUMENTS,
) -> list[tuple[Instrument, Columns]]:
    """Exactly `events` trades across `instruments`, in [start_ns, start_ns + window).

    Per instrument, the trade columns of `schemas.batch.COLUMNS[Kind.TRADE]`, sorted by
    `ts_event`. `trade_id` = a seed-dependent offset + `start_ns` in µs + position, so ids
    are unique and increasing, and consecutive windows of one seed never reuse an id (as
    long as an instrument stays under 10^6 trades per simulated second).
    """
    duration = window_ns(events, rate_per_s)
    if not 0 <= start_ns <= _MAX_START_NS:
        raise ValueError(f"start_ns must be in [0, {_MAX_START_NS}], got {start_ns}")
    if not instruments:
        raise ValueError("no instruments")
    keys = [(i.venue, i.symbol) for i in instruments]
    if len(set(keys)) != len(keys):
        raise ValueError("instruments must be unique by venue and symbol")

    master = np.random.Generator(np.random.PCG64(seed))
    regime_rng, *rngs = master.spawn(1 + len(instruments))
    market = _Market.draw(regime_rng, float(duration), rate_per_s)
    counts = _split(events, np.array([i.weight for i in instruments], dtype=np.float64))
    out = [
        (inst, _simulate(rng, inst, int(n), market=market, start_ns=start_ns, duration=duration))
        for inst, rng, n in zip(instruments, rngs, counts.tolist(), strict=True)
    ]
    return out


async def produce(
    producer: EventSink,
    seed: int,
    events: int,
    *,
    start_ns: int,
    rate_per_s: float = 100.0,
    pace: float = 0.0,
    instruments: Sequence[Instrument] = DEFAULT_INSTRUMENTS,
    hold: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """Feed the generated trades to `producer` in simulated-time order; returns the count.

    Simulated time is cut into slices (about 4096 expected events each, or ~10 ms of wall
    time when pacing); each slice adds each instrument's trades of that slice. `pace` > 0
    emits at that many events per wall-clock second, sleeping between slices when ahead.
    `hold`, if given, is awaited before each slice with the count sent so far; time spent
    in it is not made up for afterwards (fault tests pause the feed mid-stream with it).
    """
    if not (math.isfinite(pace) and pace >= 0):
        raise ValueError(f"pace must be >= 0, got {pace}")
    # generation of millions of events takes seconds: keep the event loop (Kafka client) alive
    data = await asyncio.to_thread(
        generate, seed, events, start_ns=start_ns, rate_per_s=rate_per_s, instruments=instruments
    )
    log.info(
        "synthetic market generated",
        seed=seed,
        events=events,
        instruments=len(data),
        start_ns=start_ns,
        rate_per_s=rate_per_s,
        pace=pace,
    )
    if events == 0:
        return 0
    target = _SLICE_EVENTS if pace == 0 else min(_SLICE_EVENTS, max(1.0, pace * _PACE_TICK_S))
    slice_ns = max(1, int(target / rate_per_s * NS_PER_S))
    duration = window_ns(events, rate_per_s)
    slices = -(-duration // slice_ns)
    edges = start_ns + np.arange(slices + 1, dtype=np.int64) * slice_ns
    cuts = [np.searchsorted(cols["ts_event"], edges, side="left").tolist() for _, cols in data]

    loop = asyncio.get_running_loop()
    began = loop.time()
    sent = 0
    for s in range(slices):
        if hold is not None:
            held_since = loop.time()
            await hold(sent)
            began += loop.time() - held_since
        for (inst, cols), cut in zip(data, cuts, strict=True):
            a, b = cut[s], cut[s + 1]
            if b > a:
                part = {name: col[a:b] for name, col in cols.items()}
                await producer.add(Kind.TRADE, inst.venue, inst.symbol, part)
                sent += b - a
        ahead = sent / pace - (loop.time() - began) if pace > 0 else 0.0
        # yield every slice so the producer's linger task and the Kafka client can run
        await asyncio.sleep(ahead if ahead > 0.001 else 0)
    return sent


# ---- internals ------------------------------------------------------------------------


def _split(events: int, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Largest-remainder split of `events` by weight: exact total, seed-independent."""
    quotas = events * weights / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    rest = events - int(counts.sum())
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


@dataclass(frozen=True)
class _Market:
    """The shared calm/burst regime path, as piecewise-constant intensity over the window."""

    edges: npt.NDArray[np.float64]  # K+1 regime boundaries, ns offsets from the start
    burst: npt.NDArray[np.bool_]  # K regimes: burst or calm
    intensity: npt.NDArray[np.float64]  # K relative arrival intensities
    cum: npt.NDArray[np.float64]  # K+1 cumulative intensity at the edges
    calm_vol: float  # calm volatility multiplier so the long-run average is 1
    burst_share: float

    @classmethod
    def draw(cls, rng: np.random.Generator, duration: float, rate_per_s: float) -> _Market:
        mean = np.array([_CALM_EVENTS, _BURST_EVENTS]) / rate_per_s * NS_PER_S
        share = float(mean[1] / mean.sum())
        first = int(rng.random() < share)
        parts: list[npt.NDArray[np.float64]] = []
        covered, drawn = 0.0, 0
        while covered < duration:
            m = max(16, int(2 * (duration - covered) / mean.sum()) + 16)
            kinds = (first + drawn + np.arange(m)) % 2
            d = rng.standard_exponential(m) * mean[kinds]
            parts.append(d)
            covered += float(d.sum())
            drawn += m
        ends = np.cumsum(np.concatenate(parts))
        k = min(int(np.searchsorted(ends, duration, side="left")) + 1, len(ends))
        edges = np.concatenate([[0.0], ends[:k]])
        edges[-1] = duration
        burst = ((first + np.arange(k)) % 2).astype(bool)
        intensity = np.where(burst, _BURST_INTENSITY, 1.0)
        cum = np.concatenate([[0.0], np.cumsum(intensity * np.diff(edges))])
        calm_vol = 1.0 / math.sqrt((1 - share) + share * _BURST_VOL**2)
        return cls(edges, burst, intensity, cum, calm_vol, share)

    def times(
        self, u: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
        """Map sorted cumulative-intensity values in [0, total] to ns offsets and regimes.

        `u` is sorted, so each regime's share of it is found by searching the few regime
        edges in `u` (O(K log n)) rather than every value in the edges (O(n log K)).
        """
        bounds = np.searchsorted(u, self.cum, side="left")
        bounds[0], bounds[-1] = 0, len(u)  # the last regime also takes u == total
        k = np.repeat(np.arange(len(self.intensity)), np.diff(bounds))
        return self.edges[k] + (u - self.cum[k]) / self.intensity[k], k


def _decimals(step: float) -> int:
    """Decimal places of a tick or lot size, to print prices without float noise."""
    return max(0, -int(Decimal(repr(step)).normalize().as_tuple().exponent))


def _simulate(
    rng: np.random.Generator,
    inst: Instrument,
    n: int,
    *,
    market: _Market,
    start_ns: int,
    duration: int,
) -> Columns:
    total = float(market.cum[-1])
    # exactly n sorted uniforms on (0, total) in O(n): normalised exponential spacings
    spacings = rng.standard_exponential(n + 1)
    acc = np.cumsum(spacings)
    t, regime = market.times(acc[:-1] * (total / acc[-1]))
    ts_event = np.minimum(np.floor(t).astype(np.int64), duration - 1)
    np.maximum.accumulate(ts_event, out=ts_event)  # float rounding at regime edges
    ts_event += start_ns

    # mid: GBM with burst-dependent volatility plus compound-Poisson jumps
    vol = inst.annual_vol * market.calm_vol * np.where(market.burst[regime], _BURST_VOL, 1.0)
    dt = np.diff(t, prepend=0.0) / _YEAR_NS
    z = rng.standard_normal(n)
    jumps_per_year = inst.jumps_per_day * _YEAR_NS / _DAY_NS
    compensator = jumps_per_year * math.expm1(inst.jump_std**2 / 2)
    log_mid = vol * np.sqrt(dt) * z - (0.5 * vol**2 + compensator) * dt
    np.cumsum(log_mid, out=log_mid)
    n_jumps = int(rng.poisson(inst.jumps_per_day * duration / _DAY_NS))
    jump_t, _ = market.times(np.sort(rng.random(n_jumps)) * total)
    jump_sum = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, inst.jump_std, n_jumps))])
    log_mid += jump_sum[np.searchsorted(jump_t, t, side="right")]
    mid = inst.price * np.exp(log_mid)

    # aggressor side, correlated with the shock; the trade hits the bid or lifts the ask
    w = rng.standard_normal(n, dtype=np.float32)
    side = np.where(_SIDE_RHO * z + math.sqrt(1 - _SIDE_RHO**2) * w >= 0, 1, -1).astype(np.int64)
    half = mid * (inst.spread_bps * 0.5e-4)
    bid = np.maximum(np.floor((mid - half) / inst.tick_size), 1.0)
    ask = np.maximum(np.ceil((mid + half) / inst.tick_size), bid + 1.0)
    price = np.round(np.where(side > 0, ask, bid) * inst.tick_size, _decimals(inst.tick_size))

    s = inst.size_sigma
    raw_size = inst.mean_size * np.exp(s * rng.standard_normal(n) - 0.5 * s * s)
    lots = np.maximum(np.ceil(raw_size / inst.lot_size), 1.0)
    size = np.round(lots * inst.lot_size, _decimals(inst.lot_size))

    shape = _LATENCY_SIGMA * rng.standard_normal(n, dtype=np.float32)
    latency = inst.latency_ms * 1e6 * np.exp(shape)
    ts_recv = ts_event + latency.astype(np.int64) + 1

    id_base = int(rng.integers(1, 2**52)) + start_ns // 1000
    trade_id = id_base + np.arange(n, dtype=np.int64)
    if inst.sequenced:
        seq = int(rng.integers(1, 2**40)) + np.arange(n, dtype=np.int64)
    else:
        seq = np.full(n, -1, dtype=np.int64)
    return {
        "ts_event": ts_event,
        "ts_recv": ts_recv,
        "price": price,
        "size": size,
        "side": side,
        "trade_id": trade_id,
        "seq": seq,
    }
