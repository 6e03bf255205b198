"""Schema migrations, run from code: no alembic.ini needed.

    python -m workers.store.migrate upgrade [--url URL]   bring the schema to the newest revision
    python -m workers.store.migrate current [--url URL]   print the revision the database is at

Without ``--url`` the settings decide (``LEARNLOOP_DATABASE__URL``, else the
SQLite file under ``LEARNLOOP_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy import Engine, text

from schemas.errors import ConfigError, LearnloopError
from workers.store.config import DatabaseConfig, database_url
from workers.store.engine import available, describe, engine_for, make_engine, writer

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant will do: it only has to be the same for every learnloop process.
_PG_LOCK_KEY = 0x6C6C_6D69_6772
# alembic.context and alembic.op are module-level proxies: one migration run per process at a time.
_ALEMBIC = threading.Lock()


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (and at ``url`` for the alembic command)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    return cfg


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise LearnloopError(f"no migrations found in {MIGRATIONS}")
    return head


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest revision (a no-op when it is there already).

    One transaction on both engines, and processes that start together take
    turns instead of racing: SQLite's write lock is taken when it begins, on
    PostgreSQL an advisory lock is.
    """
    engine = make_engine(url, pool_size=1)
    try:
        with available("schema upgrade"), writer(engine).begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            with _ALEMBIC:
                command.upgrade(cfg, "head")
    finally:
        engine.dispose()


def migrated_engine(config: DatabaseConfig, data_dir: Path) -> Engine:
    """The settings' database brought to the head revision, and an engine on it (what every worker opens)."""
    upgrade(database_url(config, data_dir))
    return engine_for(config, data_dir)


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: never migrated)."""
    engine = make_engine(url, pool_size=1)
    try:
        with available("schema lookup"), engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _settings_url() -> str:
    from workers.settings import load_settings

    settings = load_settings()
    return database_url(settings.database, settings.data_dir)


def _given_url(url: str) -> str:
    try:
        config = DatabaseConfig(url=url)
    except ValidationError:
        raise ConfigError("--url: must be a sqlite://, postgresql:// or postgresql+psycopg:// URL") from None
    return database_url(config, Path("."))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.store.migrate",
        description=(__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["upgrade", "current"])
    parser.add_argument("--url", help="SQLAlchemy URL (default: from LEARNLOOP_* settings)")
    args = parser.parse_args(argv)
    try:
        url = _given_url(args.url) if args.url else _settings_url()
        if args.action == "upgrade":
            upgrade(url)
            print(f"{describe(url)}: at revision {current_revision(url)} (head {head_revision()})")
        else:
            print(current_revision(url) or "none (never migrated)")
    except LearnloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
