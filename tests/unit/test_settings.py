"""Settings from the environment: nesting with ``__``, one ConfigError line per mistake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from streams.config import KafkaConfig
from workers.settings import DEV_ENV_FILE, DEV_SNAPSHOT_KEY, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LEARNLOOP_* from the outer environment, no .learnloop/dev.env from the repo."""
    for name in list(os.environ):
        if name.startswith("LEARNLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_nested_env_vars_reach_their_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS", "k1:9093,k2:9094")
    monkeypatch.setenv("LEARNLOOP_REDIS__URL", "redis://cache:6380/2")
    monkeypatch.setenv("LEARNLOOP_FEEDBACK__BATCH_MAX_RECORDS", "123")
    s = load_settings()
    assert (s.kafka.bootstrap_servers, s.redis.url, s.feedback.batch_max_records) == (
        "k1:9093,k2:9094",
        "redis://cache:6380/2",
        123,
    )
    assert s.kafka.partitions == KafkaConfig().partitions  # the rest of the section keeps its defaults


def test_without_env_the_defaults_apply() -> None:
    s = load_settings()
    assert s.kafka == KafkaConfig()
    assert s.snapshot.key.get_secret_value() == DEV_SNAPSHOT_KEY


def test_dev_env_file_is_read_and_real_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / DEV_ENV_FILE
    env_file.parent.mkdir()
    env_file.write_text(
        "LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:41000\nLEARNLOOP_REDIS__URL=redis://127.0.0.1:41001/0\n"
    )
    monkeypatch.setenv("LEARNLOOP_REDIS__URL", "redis://elsewhere:6379/0")
    s = load_settings()
    assert (s.kafka.bootstrap_servers, s.redis.url) == ("127.0.0.1:41000", "redis://elsewhere:6379/0")


@pytest.mark.parametrize(
    ("var", "value", "problem"),
    [
        ("LEARNLOOP_KAFKA__PARTITIONS", "zero", "valid integer"),
        ("LEARNLOOP_KAFKA__PARTITIONS", "0", "greater than or equal to 1"),
        ("LEARNLOOP_FEEDBACK__BATCH_MAX_RECORDS", "-5", "greater than or equal to 1"),
        ("LEARNLOOP_REDIS__URL", "http://cache:6379", "must start with redis://"),
        ("LEARNLOOP_KAFKA__SECURITY_PROTOCOL", "TLS", "'PLAINTEXT'"),
        ("LEARNLOOP_LOG_LEVEL", "loud", "'debug'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, problem: str
) -> None:
    message = config_error(monkeypatch, **{var: value})
    assert message.startswith(f"{var}: ")
    assert problem in message
    assert repr(value) in message


def test_more_errors_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch, LEARNLOOP_KAFKA__PARTITIONS="zero", LEARNLOOP_LOG_LEVEL="loud")
    assert message.endswith("(+1 more)")


def test_a_short_snapshot_key_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "fifteen-bytes!!"
    monkeypatch.setenv("LEARNLOOP_SNAPSHOT__KEY", secret)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("LEARNLOOP_SNAPSHOT__KEY: ")
    assert "16 bytes" in message
    assert secret not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained error carries it


@pytest.mark.parametrize("servers", ["localhost", "broker:port", "a:9092,b", ":9092"])
def test_bad_bootstrap_servers_are_refused(monkeypatch: pytest.MonkeyPatch, servers: str) -> None:
    message = config_error(monkeypatch, LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS=servers)
    assert message.startswith("LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS: ")
    assert "host:port" in message


def test_overrides_are_validated_like_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"^LEARNLOOP_KAFKA__PARTITIONS: "):
        load_settings(kafka={"partitions": 0})


# -- regressions: problems found and fixed -------------------------------------------


def test_a_section_given_as_bad_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNLOOP_KAFKA", "{bad")
    with pytest.raises(ConfigError, match="LEARNLOOP_KAFKA"):
        load_settings()


def test_a_bad_redis_url_does_not_echo_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch, LEARNLOOP_REDIS__URL="reddis://:hunter2-secret@cache:6379/0")
    assert message.startswith("LEARNLOOP_REDIS__URL: ")
    assert "hunter2-secret" not in message


def test_a_validator_message_reads_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch, LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS="localhost")
    assert "Value error" not in message
    assert message.count("'localhost'") == 1
