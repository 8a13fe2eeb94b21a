from __future__ import annotations

import asyncio

import pytest

from agents.delivery import delivered


async def test_a_stopped_wait_leaves_the_deliveries_to_the_producer() -> None:
    loop = asyncio.get_running_loop()
    deliveries = [loop.create_future() for _ in range(3)]
    waiting = asyncio.create_task(delivered(deliveries))
    await asyncio.sleep(0)
    waiting.cancel()  # the worker stops mid-batch
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not any(d.cancelled() for d in deliveries)
    for d in deliveries:  # the producer's flush on stop still acks them
        d.set_result(None)


async def test_all_acked_returns_and_a_failure_is_raised() -> None:
    loop = asyncio.get_running_loop()
    await delivered([])
    ok, failed, also_failed = (loop.create_future() for _ in range(3))
    ok.set_result(None)
    await delivered([ok])
    failed.set_exception(ConnectionError("broker gone"))
    also_failed.set_exception(ConnectionError("broker gone"))
    with pytest.raises(ConnectionError):
        await delivered([ok, failed, also_failed])


async def test_a_cancelled_delivery_is_not_taken_for_an_ack() -> None:
    lost = asyncio.get_running_loop().create_future()
    lost.cancel()
    with pytest.raises(RuntimeError, match="cancelled"):
        await delivered([lost])
