from __future__ import annotations

from pathlib import Path

from streams.settings import Settings


def test_env_parsing_namespacing_and_child_env_round_trip(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t\n")
    env = {
        "SEPSTREAM_NAMESPACE": "bt1",
        "SEPSTREAM_PARTITIONS": "2",
        "SEPSTREAM_ARCHIVE_TICKS": "off",
        "SEPSTREAM_SYMBOLS": "BTC-USDT, ETH-USDT",
        "SEPSTREAM_PG_PASSWORD_FILE": str(secret),
    }
    s = Settings.from_env(env)
    assert s.partitions == 2 and s.archive_ticks is False
    assert s.symbols == ("BTC-USDT", "ETH-USDT")
    assert s.topic("md.trades.v1") == "bt1.md.trades.v1"
    assert s.pg_schema == "bt1" and s.redis_prefix == "bt1:md:"
    assert s.pg_password == "s3cr3t"
    assert Settings.from_env(s.to_env()) == s


def test_password_never_in_redacted_view() -> None:
    s = Settings.from_env(
        {"SEPSTREAM_PG_PASSWORD": "hunter2", "SEPSTREAM_REDIS_URL": "redis://:pw@h:1/0"}
    )
    assert "hunter2" in s.dsn_with_password()
    text = repr(s.redacted()) + repr(s)
    assert "hunter2" not in text and ":pw@" not in text
