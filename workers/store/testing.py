"""Helpers for tests against a real PostgreSQL: a probe, and a throwaway schema per test.

Each test gets its own schema (selected through the connection's
``search_path``), so tests running in parallel on one database never see
each other's tables; the schema is dropped afterwards.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool


@functools.cache
def postgres_unreachable(url: str) -> str | None:
    """Why PostgreSQL at ``url`` cannot be used (one line), or None when it can."""
    engine = create_engine(url, connect_args={"connect_timeout": 2}, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        return (str(orig).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        engine.dispose()
    return None


def with_search_path(url: str, schema: str) -> str:
    """``url`` with its connections' ``search_path`` set to ``schema``."""
    return make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@contextmanager
def temporary_schema(url: str) -> Iterator[str]:
    """A URL whose tables live in a fresh schema, dropped (with everything in it) on exit."""
    schema = f"learnloop_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield with_search_path(url, schema)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()
