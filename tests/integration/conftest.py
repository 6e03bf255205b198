"""Database fixtures shared by the store tests: each test runs on SQLite (a file) and on PostgreSQL.

PostgreSQL is ``LEARNLOOP_TEST_POSTGRES_URL`` (default: the machine's server at 127.0.0.1:5432,
database ``test``); each test works in a schema of its own. Without a reachable server those cases
are skipped, saying why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from workers.store.engine import make_engine
from workers.store.migrate import upgrade
from workers.store.testing import postgres_unreachable, temporary_schema

PG_URL = os.environ.get("LEARNLOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of each kind with nothing in it, not even the schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    why = postgres_unreachable(PG_URL)
    if why is not None:
        pytest.skip(f"PostgreSQL not reachable ({why}); set LEARNLOOP_TEST_POSTGRES_URL")
    with temporary_schema(PG_URL) as url:
        yield url


@pytest.fixture
def db_url(blank_url: str) -> str:
    """A migrated, empty database of each kind."""
    upgrade(blank_url)
    return blank_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    yield e
    e.dispose()
