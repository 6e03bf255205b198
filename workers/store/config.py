"""The ``database`` settings section (``LEARNLOOP_DATABASE__URL`` and friends).

Kept free of SQLAlchemy so that ``workers.settings`` can import it cheaply.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
"""URL schemes the store accepts; plain ``postgresql`` means psycopg 3 (the driver we ship)."""

DB_FILE = "learnloop.db"


class DatabaseConfig(BaseModel):
    """Where the feedback store and the job records live.

    With no ``url`` the store is the SQLite file ``DATA_DIR/learnloop.db``.

    >>> DatabaseConfig(url="postgresql+psycopg://learnloop@db:5432/learnloop").pool_size
    5
    >>> from pydantic import ValidationError
    >>> try:
    ...     DatabaseConfig(url="mysql://db/x")
    ... except ValidationError as exc:
    ...     print(exc.errors()[0]["msg"])
    Value error, must be a sqlite://, postgresql:// or postgresql+psycopg:// URL
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = None
    pool_size: int = Field(default=5, ge=1, le=100)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme, sep, _ = v.partition("://")
        if not sep or scheme.lower() not in SCHEMES:
            # The URL may hold a password: the message never repeats it.
            raise ValueError("must be a sqlite://, postgresql:// or postgresql+psycopg:// URL")
        return v


def database_url(config: DatabaseConfig, data_dir: Path) -> str:
    """The SQLAlchemy URL to open: the configured one, or the SQLite file under ``data_dir``.

    ``postgresql://`` is rewritten to ``postgresql+psycopg://``: SQLAlchemy would
    otherwise pick psycopg2, which learnloop does not install.

    >>> database_url(DatabaseConfig(), Path("/var/lib/learnloop"))
    'sqlite:////var/lib/learnloop/learnloop.db'
    >>> database_url(DatabaseConfig(url="postgresql://u@db/ll"), Path("."))
    'postgresql+psycopg://u@db/ll'
    """
    if config.url is None:
        return f"sqlite:///{data_dir / DB_FILE}"
    scheme, _, rest = config.url.partition("://")
    if scheme.lower() == "postgresql":
        return f"postgresql+psycopg://{rest}"
    return config.url


def redact_url(url: str) -> str:
    """``url`` without the password of its userinfo, for logs and messages (any scheme).

    >>> redact_url("postgresql://ll:secret@db/ll"), redact_url("redis://:pw@cache:6379/0")
    ('postgresql://***@db/ll', 'redis://***@cache:6379/0')
    """
    return re.sub(r"(?<=://)[^/@\s]*@", "***@", url)
