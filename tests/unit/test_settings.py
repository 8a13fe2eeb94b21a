"""Settings from the environment: typed, one line per bad value, typos reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings, SettingsError, unknown_variables


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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEPSTREAM_PARTITIONS": "four"}, "SEPSTREAM_PARTITIONS='four': Input should be a valid"),
        ({"SEPSTREAM_PARTITIONS": "0"}, "SEPSTREAM_PARTITIONS='0': Input should be greater"),
        ({"SEPSTREAM_ARCHIVE_TICKS": "maybe"}, "SEPSTREAM_ARCHIVE_TICKS='maybe': Input should be"),
        ({"SEPSTREAM_DAMPING_DTYPE": "float16"}, "SEPSTREAM_DAMPING_DTYPE='float16': Input"),
        ({"SEPSTREAM_NAMESPACE": "Bad-NS"}, "SEPSTREAM_NAMESPACE='Bad-NS': Value error"),
        ({"SEPSTREAM_WEB_PORT": "70000"}, "SEPSTREAM_WEB_PORT='70000': Input should be less"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_bad_secret_is_named_but_not_shown(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"SEPSTREAM_PG_PASSWORD_FILE": str(tmp_path / "absent")})
    assert "SEPSTREAM_PG_PASSWORD_FILE" in str(err.value)
    with pytest.raises(SettingsError) as err:
        Settings(pg_password="hunter2").replace(pg_password=["not", "text"])
    assert "SEPSTREAM_PG_PASSWORD=***" in str(err.value) and "not" not in str(err.value)


def test_unknown_variables_are_reported_with_the_closest_setting() -> None:
    env = {
        "SEPSTREAM_PARTITONS": "8",  # a typo
        "SEPSTREAM_DEV_PG_PORT": "55434",  # deploy/dev.sh's own
        "SEPSTREAM_CPU_BIND": "auto",  # the worker command's option
        "SEPSTREAM_PG_PASSWORD_FILE": "/run/secrets/pg",
    }
    assert unknown_variables(env) == {"SEPSTREAM_PARTITONS": ["SEPSTREAM_PARTITIONS"]}


def test_code_overrides_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="SEPSTREAM_PARTITIONS"):
        Settings.from_env({}, partitions="x")
    with pytest.raises(SettingsError, match="SEPSTREAM_NO_SUCH_FIELD"):
        Settings(partitions=2).replace(no_such_field=1)
    assert Settings.from_env({"SEPSTREAM_SYMBOLS": " BTC-USDT, ,ETH-USDT "}).symbols == (
        "BTC-USDT",
        "ETH-USDT",
    )
