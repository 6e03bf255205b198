"""The embedded knowledge graph: LadybugDB (PyPI ``ladybug``, Kùzu's maintained fork) in a local folder.

What this engine needs that Neo4j does not (measured with ladybug 0.22):

- the schema is declared up front (node and rel tables, primary keys);
- a key repeated inside one ``UNWIND`` batch is miscounted by ``MERGE``, so
  rows arrive aggregated per key (``GraphBatch.fold``);
- ``datetime()``/``timestamp()`` without arguments do not exist, so times are
  parameters; ``TIMESTAMP`` drops the UTC offset, so they are passed as naive
  UTC and read back as aware UTC;
- no list comprehensions: the conversation set grows with ``list_distinct``;
- an error inside ``BEGIN TRANSACTION`` rolls the transaction back by itself.

Ad-hoc queries run inside ``BEGIN TRANSACTION READ ONLY`` (the engine refuses
writes there) after the keyword guard. A second read-only ``Database`` on the
same folder would be a snapshot taken at open time, so it is used only when the
whole graph is opened ``read_only=True`` (a CLI next to a running worker: the
worker holds the file lock, read-only opens are still allowed).

Outages: an engine error (database closed, file locked by another process, I/O)
drops the connection; the next attempt reopens it. After ``retries`` attempts
``write`` raises ``BackPressureError``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import ladybug

from schemas.envelope import as_utc
from schemas.errors import ReadOnlyViolation, StoreUnavailable
from workers.graph import CypherGraph
from workers.graph.queries import Run, merge_related

DB_FILE = "graph.lbdb"

SCHEMA = (
    "CREATE NODE TABLE IF NOT EXISTS Entity(key STRING, name STRING, label STRING, mentions INT64, "
    "first_seen TIMESTAMP, last_seen TIMESTAMP, PRIMARY KEY (key))",
    "CREATE NODE TABLE IF NOT EXISTS Conversation(id STRING, PRIMARY KEY (id))",
    "CREATE NODE TABLE IF NOT EXISTS SourceEvent(id STRING, written_at TIMESTAMP, PRIMARY KEY (id))",
    "CREATE REL TABLE IF NOT EXISTS MENTIONS(FROM Conversation TO Entity, count INT64)",
    "CREATE REL TABLE IF NOT EXISTS RELATED(FROM Entity TO Entity, predicate STRING, confidence DOUBLE, "
    "support INT64, validated BOOLEAN, first_seen TIMESTAMP, last_seen TIMESTAMP, "
    "conversations STRING[], event_ids STRING[])",
)


def _from_engine(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, list):
        return [_from_engine(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_engine(v) for k, v in value.items()}
    return value


class LadybugGraph(CypherGraph):
    """The knowledge graph in ``path`` (a folder, created if missing; the database is ``path/graph.lbdb``).

    >>> import tempfile
    >>> from datetime import UTC, datetime
    >>> from learners.knowledge.model import Entity, Extraction, GraphBatch
    >>> ada = Entity("PERSON:ada", "Ada", "PERSON")
    >>> ex = Extraction("e1", "c1", datetime(2026, 1, 1, tzinfo=UTC), (ada,), (("PERSON:ada", 2),))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     g = LadybugGraph(Path(d))
    ...     g.write(GraphBatch.fold([ex])), g.write(GraphBatch.fold([ex])), g.stats()["entities"]
    ...     g.close()
    (['e1'], [], 1)
    """

    ENGINE_ERRORS: ClassVar[tuple[type[BaseException], ...]] = (RuntimeError, OSError)
    MERGE_RELATED: ClassVar[str] = merge_related("list_distinct(x.conversations + r.conversations)")

    def __init__(
        self,
        path: Path,
        *,
        min_support: int = 2,
        min_confidence: float = 0.5,
        retries: int = 5,
        backoff_s: float = 0.2,
        read_only: bool = False,
        threads: int = 0,
    ) -> None:
        super().__init__(min_support=min_support, min_confidence=min_confidence, retries=retries, backoff_s=backoff_s)
        self.path = Path(path)
        self.read_only = read_only
        self.threads = threads  # the engine's query threads; 0: every core
        self._db: ladybug.Database | None = None
        self._conn: ladybug.Connection | None = None
        self._lock = threading.RLock()

    def _connection(self) -> ladybug.Connection:
        if self._conn is None:
            file = self.path / DB_FILE
            if self.read_only:
                if not file.exists():
                    raise StoreUnavailable(f"no graph at {file}")
            else:
                self.path.mkdir(parents=True, exist_ok=True)
            db = ladybug.Database(str(file), read_only=self.read_only, max_num_threads=self.threads)
            try:
                conn = ladybug.Connection(db)
                if not self.read_only:
                    for statement in SCHEMA:
                        _close(conn.execute(statement))
            except BaseException:
                db.close()
                raise
            self._db, self._conn = db, conn
        return self._conn

    def _reset(self, exc: BaseException | None = None) -> None:
        with self._lock:
            conn, db, self._conn, self._db = self._conn, self._db, None, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()

    def close(self) -> None:
        self._reset()

    def _time(self, dt: datetime) -> Any:
        return as_utc(dt).replace(tzinfo=None)

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Run]:
        if write and self.read_only:
            raise ReadOnlyViolation(f"the graph at {self.path} is open read-only")
        with self._lock:
            conn = self._connection()

            def run(
                cypher: str, params: Mapping[str, Any] | None = None, *, limit: int | None = None
            ) -> list[dict[str, Any]]:
                result = conn.execute(cypher, dict(params or {}))
                if isinstance(result, list):
                    for r in result:
                        r.close()
                    raise ReadOnlyViolation("one statement at a time")
                try:
                    result.rows_as_dict()
                    rows = result.get_all() if limit is None else result.get_n(limit)
                finally:
                    result.close()
                return [_from_engine(r) for r in rows if isinstance(r, dict)]

            _close(conn.execute("BEGIN TRANSACTION" if write else "BEGIN TRANSACTION READ ONLY"))
            try:
                yield run
            except BaseException:
                # An engine error has already rolled back; ours (DuplicateEvents, ...) has not.
                with contextlib.suppress(RuntimeError):
                    _close(conn.execute("ROLLBACK"))
                raise
            _close(conn.execute("COMMIT"))


def _close(result: ladybug.QueryResult | list[ladybug.QueryResult]) -> None:
    for r in result if isinstance(result, list) else [result]:
        r.close()
