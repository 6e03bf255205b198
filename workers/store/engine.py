"""Opening the database and turning its outages into ``StoreUnavailable``.

SQLite gets the settings a multi-process store needs: WAL (readers do not
block the writer), a busy timeout, and transactions that SQLAlchemy begins
itself. Writers begin with ``BEGIN IMMEDIATE`` (see :func:`writer`): a
deferred transaction that reads and then writes can fail at once with
"database is locked" when another process committed in between, whereas an
immediate one waits for the write lock up front.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from schemas.errors import StoreUnavailable
from workers.store.config import DatabaseConfig, database_url, redact_url

BUSY_TIMEOUT_S = 30.0
_IMMEDIATE = "learnloop_sqlite_immediate"
_MIGRATE_HINT = "the database schema is missing or old: run `python -m workers.store.migrate upgrade`"


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    """An engine for ``url`` (sqlite or postgresql+psycopg), ready for the stores.

    A SQLite file's folder is created if needed; ``postgresql://`` means psycopg 3.
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
        if database and database != ":memory:":
            kwargs["pool_size"] = pool_size
        engine = create_engine(parsed, **kwargs)
        _sqlite_transactions(engine)
        return engine
    return create_engine(parsed, pool_size=pool_size, pool_pre_ping=True, **kwargs)


def engine_for(config: DatabaseConfig, data_dir: Path) -> Engine:
    """The engine the settings describe (see :func:`workers.store.config.database_url`)."""
    return make_engine(database_url(config, data_dir), pool_size=config.pool_size, echo=config.echo)


def writer(engine: Engine) -> Engine:
    """The same engine, its transactions taking SQLite's write lock when they begin (no-op elsewhere)."""
    return engine.execution_options(**{_IMMEDIATE: True})


def _sqlite_transactions(engine: Engine) -> None:
    # SQLAlchemy's documented recipe: stop sqlite3 from issuing its own BEGIN
    # (it skips SELECTs and DDL) and emit ours, so every transaction is real.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            _use_wal(cursor)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _use_wal(cursor: Any) -> None:
    # WAL is a property of the file and sticks once set. Switching a new file
    # needs an exclusive lock and SQLite does not wait for it with the busy
    # handler, so processes that open a fresh file together retry here.
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() in ("wal", "memory"):
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")  # a file that cannot use WAL keeps its mode
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def describe(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    return redact_url(url)


def _first_line(exc: sa_exc.SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _schema_missing(exc: sa_exc.DBAPIError) -> bool:
    orig = exc.orig
    # 42P01: PostgreSQL's undefined_table; SQLite says so in words.
    return getattr(orig, "sqlstate", None) == "42P01" or "no such table" in str(orig)


def _statement_bug(exc: sa_exc.DBAPIError) -> bool:
    # sqlite3 raises OperationalError for syntax errors and unknown columns too;
    # those are bugs to see, not outages to wait out (busy, I/O, full, can't open).
    return getattr(exc.orig, "sqlite_errorname", None) == "SQLITE_ERROR"


@contextlib.contextmanager
def available(what: str) -> Iterator[None]:
    """Raise ``StoreUnavailable`` (one readable line) for an outage or a missing schema during ``what``."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
        if _schema_missing(exc):
            raise StoreUnavailable(f"database unusable during {what}: {_first_line(exc)} ({_MIGRATE_HINT})") from exc
        if isinstance(exc, sa_exc.ProgrammingError) or _statement_bug(exc):
            raise
        raise StoreUnavailable(f"database unavailable during {what}: {_first_line(exc)}") from exc
    except (sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError) as exc:
        raise StoreUnavailable(f"database unavailable during {what}: {_first_line(exc)}") from exc
