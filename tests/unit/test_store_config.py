"""The database settings section, engines, and how outages surface (StoreUnavailable, one line)."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import delete, select, text

from schemas.errors import StoreUnavailable
from workers.store import config as config_module
from workers.store.config import DatabaseConfig, database_url
from workers.store.engine import available, describe, engine_for, make_engine
from workers.store.feedback import FeedbackStore
from workers.store.jobs import JobStore
from workers.store.models import Base, FeedbackSample
from workers.store.samples import SampleIn


@pytest.mark.parametrize(
    "url",
    ["sqlite:///x.db", "sqlite://", "postgresql://u:p@db/ll", "postgresql+psycopg://db/ll", "POSTGRESQL://db/ll"],
)
def test_accepted_urls(url: str) -> None:
    assert DatabaseConfig(url=url).url == url


@pytest.mark.parametrize("url", ["mysql://db/x", "postgresql+psycopg2://db/x", "db.example:5432", "sqlite:/x.db"])
def test_refused_urls_say_what_is_expected_without_echoing(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        DatabaseConfig(url=url)
    msg = info.value.errors()[0]["msg"]
    assert msg == "Value error, must be a sqlite://, postgresql:// or postgresql+psycopg:// URL"


def test_config_is_frozen_and_closed() -> None:
    with pytest.raises(ValidationError):
        DatabaseConfig(uri="sqlite://")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        DatabaseConfig(pool_size=0)
    cfg = DatabaseConfig()
    with pytest.raises(ValidationError):
        cfg.echo = True


def test_database_url_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    assert database_url(DatabaseConfig(), tmp_path) == f"sqlite:///{tmp_path}/learnloop.db"
    assert database_url(DatabaseConfig(url="sqlite:///other.db"), tmp_path) == "sqlite:///other.db"
    assert database_url(DatabaseConfig(url="postgresql://u@h/d"), tmp_path) == "postgresql+psycopg://u@h/d"


def test_engine_for_creates_the_data_dir(tmp_path: Path) -> None:
    engine = engine_for(DatabaseConfig(), tmp_path / "a" / "b")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert (tmp_path / "a" / "b" / "learnloop.db").exists()
    finally:
        engine.dispose()


def test_describe_hides_the_password() -> None:
    assert describe("postgresql+psycopg://user:s3cret@db:5432/ll") == "postgresql+psycopg://***@db:5432/ll"


def test_times_come_back_aware_utc_from_sqlite() -> None:
    engine = make_engine("sqlite://")
    Base.metadata.create_all(engine)
    paris = timezone(timedelta(hours=1))
    at = datetime(2026, 3, 1, 13, 30, tzinfo=paris)
    FeedbackStore(engine).add_many([SampleIn(event_id="e", learner="l", label=1, occurred_at=at, source="s", text="t")])
    with engine.connect() as conn:
        got = conn.execute(select(FeedbackSample.occurred_at)).scalar_one()
        raw = conn.execute(text("SELECT occurred_at FROM feedback_samples")).scalar_one()
    assert got == at and got.tzinfo is UTC
    assert raw.startswith("2026-03-01 12:30:00")  # stored as UTC text: it sorts and compares correctly
    engine.dispose()


def test_naive_times_are_refused_at_the_database_boundary() -> None:
    engine = make_engine("sqlite://")
    Base.metadata.create_all(engine)
    with pytest.raises(Exception, match="timezone-aware"), engine.begin() as conn:
        conn.execute(delete(FeedbackSample).where(FeedbackSample.occurred_at < datetime(2026, 1, 1)))
    engine.dispose()


def test_a_missing_schema_says_to_migrate(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(StoreUnavailable) as info:
        FeedbackStore(engine).count()
    assert "no such table: feedback_samples" in str(info.value)
    assert "python -m workers.store.migrate upgrade" in str(info.value)
    with pytest.raises(StoreUnavailable):
        JobStore(engine).list()
    engine.dispose()


def test_an_unreachable_server_is_store_unavailable_in_one_line() -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        with pytest.raises(StoreUnavailable) as info:
            FeedbackStore(engine).count(["ctr"])
        message = str(info.value)
        assert message.startswith("database unavailable during feedback count: ")
        assert "\n" not in message
    finally:
        engine.dispose()


def test_other_database_errors_are_not_disguised_as_outages() -> None:
    engine = make_engine("sqlite://")
    with pytest.raises(Exception) as info, available("test"), engine.connect() as conn:
        conn.execute(text("SELEC 1"))
    assert not isinstance(info.value, StoreUnavailable)
    engine.dispose()


def test_doctests() -> None:
    assert doctest.testmod(config_module).failed == 0
