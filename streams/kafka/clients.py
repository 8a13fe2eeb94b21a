"""Every Kafka client is configured and started here: TLS/SASL from the settings, and the
aiokafka start/stop workarounds next to the versions they work around."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import CredentialsT

from streams.settings import Settings

type KafkaClient = AIOKafkaConsumer | AIOKafkaProducer | AIOKafkaAdminClient


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the broker against SEPSTREAM_KAFKA_SSL_CAFILE (else the system's CAs); a
    client certificate when one is configured (mutual TLS)."""
    ctx: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_cafile or None,
        certfile=settings.kafka_ssl_certfile or None,
        keyfile=settings.kafka_ssl_keyfile or None,
    )
    return ctx


def kafka_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's `broker_credentials` for SEPSTREAM_KAFKA_SECURITY_PROTOCOL; None = PLAINTEXT."""
    protocol = settings.kafka_security_protocol  # one of four: checked by the settings
    if protocol == "PLAINTEXT":
        return None
    tls = kafka_ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(tls)
    if not settings.kafka_sasl_username or not settings.kafka_sasl_password:
        raise ValueError(
            f"{protocol} needs SEPSTREAM_KAFKA_SASL_USERNAME and "
            "SEPSTREAM_KAFKA_SASL_PASSWORD (or SEPSTREAM_KAFKA_SASL_PASSWORD_FILE)"
        )
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        ssl_context=tls,
        mechanism=settings.kafka_sasl_mechanism,
    )


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments for every aiokafka client we create (producer, consumer,
    admin): Faust's own mapping of the same credentials, so both always agree."""
    return dict(credentials_to_aiokafka_auth(kafka_credentials(settings)))


async def start_client(client: KafkaClient, finish_s: float = 5.0) -> None:
    """`client.start()`; a start that fails, or whose caller is cancelled, closes the client
    before raising, so callers need no cleanup of their own for the start.

    A cancelled caller first lets the start finish (for up to `finish_s`): cancelled
    half-way through its bootstrap, aiokafka drops the bootstrap connection unclosed
    ("Unclosed AIOKafkaConnection" at exit), which a worker stopped during its start did.
    """
    starting = asyncio.ensure_future(client.start())
    try:
        await asyncio.shield(starting)
    except BaseException:
        if not starting.done():
            await asyncio.wait([starting], timeout=finish_s)
            starting.cancel()  # a no-op once it finished
        if starting.done() and not starting.cancelled():
            starting.exception()  # retrieved: what the caller gets is what counts
        if isinstance(client, AIOKafkaConsumer):
            await stop_consumer(client)
        elif isinstance(client, AIOKafkaProducer):
            await client.stop()
        else:
            await client.close()
        raise


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """`consumer.stop()`, made safe right after (or during) `start()`.

    aiokafka's stop cancels a background task of the offsets coordinator and awaits it; if
    that task never ran a step, the await raises CancelledError and stop() gives up before
    closing the client, whose metadata task and connections then live on (aio-libs/aiokafka
    #647). One pass of the event loop first lets the task start, so it ends cleanly.
    """
    await asyncio.sleep(0)
    await consumer.stop()
