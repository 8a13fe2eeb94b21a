"""What a venue's REST history source needs to take part in the 1m-bar backfill.

The backfill (`streams.venues.backfill`) finds the missing minutes and stores bars; a
venue module only says how to ask for minute bars and how to read the answer, through a
`HistorySource` built on `PacedClient` (pacing, retries, `Retry-After`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
import structlog

from streams.settings import Settings

log = structlog.get_logger(__name__)

MINUTE_MS: Final = 60_000
_RETRY_STATUS: Final = frozenset({418, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class MinuteBar:
    """One closed 1m bar as a venue reports it; `ms` is its open time (ms since the epoch)."""

    ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int
    vwap: float = math.nan

    def sane(self) -> bool:
        """Finite positive prices, low ≤ open/close ≤ high, volume and trades ≥ 0."""
        prices = (self.open, self.high, self.low, self.close)
        return (
            all(math.isfinite(x) and x > 0 for x in prices)
            and self.low <= min(self.open, self.close) <= max(self.open, self.close) <= self.high
            and math.isfinite(self.volume)
            and self.volume >= 0
            and self.trades >= 0
        )


class HistorySource(Protocol):
    """A venue's minute-bar history (`streams.venues.backfill.HISTORY` makes them)."""

    @property
    def requests(self) -> int:
        """HTTP requests made so far (retries included)."""
        ...

    async def fetch(self, symbol: str, first_ms: int, last_ms: int) -> list[MinuteBar]:
        """Closed, sane 1m bars of `symbol` (`BASE-QUOTE`) opening in [first_ms, last_ms]."""
        ...


class RateLimiter:
    """At most `rate` acquisitions per second, evenly spaced (no bursts against a venue)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            if wait > 0:
                await asyncio.sleep(wait)
            self._next = max(now, self._next) + self.interval

    def hold(self, seconds: float) -> None:
        """The venue asked us to back off: no request before `seconds` from now."""
        self._next = max(self._next, time.monotonic() + seconds)


class PacedClient:
    """GETs of JSON, paced (`backfill_requests_per_s`), retried on 429/418/5xx and errors."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        name: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.session = session
        self.name = name
        self.headers = headers or {}
        self.limiter = RateLimiter(settings.backfill_requests_per_s)
        self.requests = 0

    async def get_json(self, url: str, params: dict[str, str]) -> Any:
        for attempt in range(self.settings.backfill_max_retries + 1):
            await self.limiter.acquire()
            self.requests += 1
            try:
                async with self.session.get(url, params=params, headers=self.headers) as resp:
                    if resp.status == 200:
                        return await resp.json(content_type=None)
                    body = (await resp.text())[:200]
                    if resp.status not in _RETRY_STATUS:
                        raise RuntimeError(f"{self.name} HTTP {resp.status}: {body}")
                    retry_after = retry_after_s(resp.headers.get("Retry-After"), attempt)
                    log.warning(
                        "history request throttled",
                        source=self.name,
                        status=resp.status,
                        retry_after_s=retry_after,
                        body=body,
                    )
                    self.limiter.hold(retry_after)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("history request failed", source=self.name, error=repr(exc))
                self.limiter.hold(min(30.0, 0.5 * 2**attempt))
        raise RuntimeError(
            f"{self.name}: gave up after {self.settings.backfill_max_retries} retries"
        )


def retry_after_s(header: str | None, attempt: int) -> float:
    try:
        return max(0.0, float(header)) if header is not None else min(60.0, 2.0**attempt)
    except ValueError:
        return min(60.0, 2.0**attempt)


def keep_sane(bars: list[MinuteBar], source: str) -> list[MinuteBar]:
    """The sane bars; each other one is logged, never stored."""
    out = []
    for bar in bars:
        if bar.sane():
            out.append(bar)
        else:
            log.warning("history bar skipped", source=source, bar=repr(bar))
    return out
