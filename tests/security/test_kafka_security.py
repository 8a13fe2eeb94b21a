"""Kafka TLS/SASL settings: how they map onto Faust's broker credentials and every aiokafka
client. The dev broker (Tansu) has no TLS or SASL listener, so the handshake itself is only
shown to be attempted (a TLS client cannot talk to its plaintext port)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from streams.app import new_faust_app
from streams.kafka.admin import admin_client
from streams.kafka.clients import kafka_client_kwargs, kafka_credentials
from streams.settings import Settings, SettingsError


def test_plaintext_by_default() -> None:
    s = Settings.from_env({})
    assert kafka_credentials(s) is None
    assert kafka_client_kwargs(s) == {"security_protocol": "PLAINTEXT"}


def test_ssl_verifies_against_the_configured_ca(tmp_path: Path) -> None:
    from tests.security.certs import CertAuthority

    ca = CertAuthority.create("kafka test CA").write_ca(tmp_path / "ca.crt")
    s = Settings.from_env(
        {"SEPSTREAM_KAFKA_SECURITY_PROTOCOL": "ssl", "SEPSTREAM_KAFKA_SSL_CAFILE": str(ca)}
    )
    kw = kafka_client_kwargs(s)
    assert kw["security_protocol"] == "SSL"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "kafka test CA"),),)]


@pytest.mark.parametrize(("protocol", "tls"), [("SASL_PLAINTEXT", False), ("SASL_SSL", True)])
def test_sasl_with_the_password_from_a_file(tmp_path: Path, protocol: str, tls: bool) -> None:
    (tmp_path / "pw").write_text("k-secret\n")
    s = Settings.from_env(
        {
            "SEPSTREAM_KAFKA_SECURITY_PROTOCOL": protocol,
            "SEPSTREAM_KAFKA_SASL_MECHANISM": "scram-sha-512",
            "SEPSTREAM_KAFKA_SASL_USERNAME": "svc-sepstream",
            "SEPSTREAM_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw"),
        }
    )
    kw = kafka_client_kwargs(s)
    assert kw["security_protocol"] == protocol
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("svc-sepstream", "k-secret")
    assert isinstance(kw["ssl_context"], ssl.SSLContext) is tls
    # the Faust app gets the same credentials; they do not print the password
    app = new_faust_app(s, web_enabled=False)
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.password == "k-secret" and "k-secret" not in repr(creds)


def test_sasl_without_credentials_or_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="SASL_USERNAME"):
        kafka_credentials(Settings.from_env({"SEPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}))
    with pytest.raises(SettingsError, match="SEPSTREAM_KAFKA_SECURITY_PROTOCOL='TLS'"):
        Settings.from_env({"SEPSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"})


async def test_clients_take_the_settings(settings: Settings) -> None:
    """PLAINTEXT reaches the dev broker; SSL to its plaintext port fails the handshake."""
    async with admin_client(settings) as admin:
        assert await admin.describe_cluster()
    tls = Settings.from_env(
        {}, kafka_bootstrap=settings.kafka_bootstrap, kafka_security_protocol="SSL"
    )
    admin = AIOKafkaAdminClient(
        bootstrap_servers=tls.kafka_bootstrap, request_timeout_ms=3000, **kafka_client_kwargs(tls)
    )
    with pytest.raises(KafkaConnectionError):
        await admin.start()
    await admin.close()
