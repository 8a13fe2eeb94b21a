"""A fetch wait that grows while the broker answers empty although data is waiting.

A short fetch wait keeps each pipeline hop fast on the dev broker (Tansu answers a fetch only
at its deadline), but Tansu also answers *with what it gathered by then*, and how long
it needs before it returns anything grows with the backlog after the fetched offset
(measured: with `fetch_max_wait_ms=10`, a partition 100k records behind gets empty answers
forever; 0 ms gets nothing even 10 records behind). A consumer that falls behind far enough
then never catches up: the worker froze after ~4 minutes of soak, its lag growing while
every fetch came back empty.

So the wait adapts, per consumer: a fetch that returned nothing for a partition whose high
water, as known before the request, was past the fetched offset doubles the wait (up to
`CAP_MS`); one that returned data for every such partition shortens it by a quarter (down
to the configured base); once no fetched partition has data waiting it drops back to the
base.
Apache Kafka returns data as soon as there is any, so there the wait never grows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiokafka import TopicPartition

from streams.ops.metrics import FETCH_WAIT_MS

log = structlog.get_logger(__name__)

CAP_MS: Final = 10_000  # well inside the client's request timeout


class AdaptiveFetchWait:
    """The policy: the next fetch's `fetch_max_wait_ms` from what the last fetch got."""

    def __init__(self, base_ms: int, cap_ms: int = CAP_MS) -> None:
        self.base_ms = max(0, base_ms)
        self.cap_ms = max(self.base_ms, cap_ms)
        self.wait_ms = self.base_ms

    def update(self, *, waiting: bool, starved: bool) -> int:
        """`waiting`: some fetched partition had data past the fetched offset; `starved`:
        one of those got no records. Returns the wait for the next fetch."""
        if starved:
            self.wait_ms = min(self.cap_ms, max(1, self.wait_ms * 2))
        elif waiting:
            # data came back: ease off towards the base, so that a busy stream (always
            # something waiting) does not keep a long wait, i.e. latency, it no longer needs
            self.wait_ms = max(self.base_ms, self.wait_ms * 3 // 4)
        else:
            self.wait_ms = self.base_ms
        return self.wait_ms


def adapt(consumer: Any, name: str) -> AdaptiveFetchWait:
    """Make a started aiokafka consumer's fetch wait adaptive, from its configured wait;
    `name` labels its `sepstream_kafka_fetch_wait_ms` gauge."""
    policy = AdaptiveFetchWait(int(consumer._fetch_max_wait_ms))
    install(consumer._fetcher, policy, name)
    return policy


def install(fetcher: Any, policy: AdaptiveFetchWait, name: str) -> None:
    """Adapt an aiokafka `Fetcher`'s wait after each of its fetch responses.

    Wraps `Fetcher._proc_fetch_request` (aiokafka internals, 0.14). Data was waiting for a
    partition if the high water known *before* the request was past the fetched offset:
    the one in the response does not tell, since Tansu returns what it found when the
    fetch arrived but the high water at its deadline, so at the log end it looks as if
    records were held back when they only arrived meanwhile. Starved: data was waiting and
    the response buffered none, or the broker has never reported on the partition at all
    (Tansu sends nothing at a 0 ms wait; Kafka always reports).
    """
    proc: Callable[[Any, int, Any], Awaitable[bool]] = fetcher._proc_fetch_request

    async def proc_adaptive(assignment: Any, node_id: int, request: Any) -> bool:
        fetched = [
            (TopicPartition(topic, partition), offset)
            for topic, partitions in request.topics
            for partition, offset, _max_bytes in partitions
        ]
        known = {tp: assignment.state_value(tp).highwater for tp, _ in fetched}
        got = await proc(assignment, node_id, request)
        waiting = starved = False
        if assignment.active:
            for tp, offset in fetched:
                before = known[tp]
                behind = before is not None and before > offset
                unanswered = assignment.state_value(tp).highwater is None
                waiting = waiting or behind or unanswered
                starved = starved or ((behind or unanswered) and tp not in fetcher._records)
        previous = policy.wait_ms
        fetcher._fetch_max_wait_ms = policy.update(waiting=waiting, starved=starved)
        if policy.wait_ms != previous:
            gauge.set(policy.wait_ms)
            if policy.wait_ms == policy.cap_ms:
                log.warning(
                    "fetch wait at its cap: the broker is slow to return the backlog",
                    consumer=name,
                    wait_ms=policy.wait_ms,
                )
        return got

    gauge = FETCH_WAIT_MS.labels(name)
    fetcher._fetch_max_wait_ms = policy.wait_ms
    fetcher._proc_fetch_request = proc_adaptive
    gauge.set(policy.wait_ms)
