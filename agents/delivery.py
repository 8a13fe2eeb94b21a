"""Waiting for the broker and the stores: the two ways a stage holds its ack back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from streams.ops.metrics import SINK_RETRIES

log = structlog.get_logger(__name__)


async def retry_forever[R](
    name: str, attempt: Callable[[], Awaitable[R]], max_backoff_s: float
) -> R:
    """Run `attempt` until it succeeds: giving up would mean dropping or acking unwritten data."""
    delay = 0.05
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            SINK_RETRIES.labels(name).inc()
            log.warning("write failed, retrying", sink=name, error=repr(exc), in_s=delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(max_backoff_s, delay * 2)


async def delivered(deliveries: Sequence[Awaitable[Any]]) -> None:
    """Wait for the broker's acks; raise the first failure.

    Unlike `asyncio.gather`, a cancelled wait (the worker stopping mid-batch) leaves the
    deliveries alone: the producer still flushes them on stop, and Faust's publish callback
    would log each cancelled one as an error.
    """
    if not deliveries:
        return
    done, _ = await asyncio.wait([asyncio.ensure_future(d) for d in deliveries])
    errors = [RuntimeError("delivery cancelled") if f.cancelled() else f.exception() for f in done]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
