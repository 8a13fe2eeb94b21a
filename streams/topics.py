"""Topic names and the topic factory: the one place agents, operator views, collectors and
replay take a topic from (docs/ARCHITECTURE.md#public-contracts).

Every name is prefixed with the settings' namespace (`Settings.topic`), so a replay or a
test namespace has topics of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from streams.settings import Settings


@dataclass(frozen=True)
class Topics:
    trades: faust.TopicT
    events: faust.TopicT
    bars: faust.TopicT
    dlq: faust.TopicT
    signals: faust.TopicT
    indicators: faust.TopicT
    model: faust.TopicT  # compacted, one partition: the newest path library under key "paths"


TOPIC_NAMES = {
    "trades": "md.trades.v1",
    "events": "md.events.v1",
    "bars": "md.bars.v1",
    "dlq": "md.dlq.v1",
    "signals": "md.signals.v1",
    "indicators": "md.indicators.v1",
}
# Not a hot topic: compacted, read whole by every worker (streams.model.library), not by a group.
MODEL_TOPIC = "md.model.paths"


def make_topics(app: faust.App, settings: Settings) -> Topics:
    """Hot topics carry raw bytes: our orjson codec decodes them, so bad bytes reach the DLQ."""
    made = {
        attr: app.topic(
            settings.topic(name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )
        for attr, name in TOPIC_NAMES.items()
    }
    model = app.topic(
        settings.topic(MODEL_TOPIC),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=1,
        compacting=True,
    )
    return Topics(**made, model=model)


# Compacted, one partition: which symbols each collector collects (streams.venues.subscriptions).
SUBSCRIPTIONS_TOPIC = "md.control.subscriptions"


def hot_topics(settings: Settings) -> dict[str, str]:
    """The namespaced names of the hot topics, by role (trades, events, bars, ...)."""
    return {attr: settings.topic(name) for attr, name in TOPIC_NAMES.items()}
