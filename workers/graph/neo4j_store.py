"""The production knowledge graph: Neo4j through the official ``neo4j`` driver.

Same data model and rules as the embedded LadybugDB adapter (see
``workers.graph``). Uniqueness constraints on ``Entity.key``,
``Conversation.id`` and ``SourceEvent.id`` are created when the driver is
opened, before the first statement; each batch is a handful of
``UNWIND $rows ... MERGE`` statements in one explicit transaction. Our own
bounded retries replace the driver's managed-transaction retries, so the caller
hears ``BackPressureError`` after ``retries`` attempts instead of waiting out
the driver's 30 s default.

Ad-hoc queries run in a ``READ_ACCESS`` session after the keyword guard; the
server refuses writes in a read transaction.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from itertools import islice
from typing import Any, ClassVar

import neo4j
from neo4j.exceptions import DriverError, Neo4jError
from neo4j.time import DateTime as Neo4jDateTime

from schemas.envelope import as_utc
from workers.graph import CypherGraph
from workers.graph.queries import Run, merge_related

CONSTRAINTS = (
    "CREATE CONSTRAINT learnloop_entity_key IF NOT EXISTS FOR (e:Entity) REQUIRE e.key IS UNIQUE",
    "CREATE CONSTRAINT learnloop_conversation_id IF NOT EXISTS FOR (c:Conversation) REQUIRE c.id IS UNIQUE",
    "CREATE CONSTRAINT learnloop_source_event_id IF NOT EXISTS FOR (s:SourceEvent) REQUIRE s.id IS UNIQUE",
)


def _from_engine(value: Any) -> Any:
    if isinstance(value, Neo4jDateTime):
        native = value.to_native()
        return as_utc(native)
    if isinstance(value, datetime):
        return as_utc(value)
    if hasattr(value, "to_native"):  # neo4j Date, Time
        return value.to_native()
    if isinstance(value, (list, tuple)):
        return [_from_engine(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_engine(v) for k, v in value.items()}
    return value


class Neo4jGraph(CypherGraph):
    """The knowledge graph in a Neo4j database (``database=None``: the server's default)."""

    ENGINE_ERRORS: ClassVar[tuple[type[BaseException], ...]] = (Neo4jError, DriverError, OSError)
    MERGE_RELATED: ClassVar[str] = merge_related(
        "x.conversations + [c IN r.conversations WHERE NOT c IN x.conversations]"
    )

    def __init__(
        self,
        uri: str,
        user: str,
        password: str,
        database: str | None = None,
        *,
        min_support: int = 2,
        min_confidence: float = 0.5,
        retries: int = 5,
        backoff_s: float = 0.2,
        connection_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(min_support=min_support, min_confidence=min_confidence, retries=retries, backoff_s=backoff_s)
        self.uri = uri
        self.user = user
        self.database = database
        self._password = password
        self._connection_timeout_s = connection_timeout_s
        self._driver: neo4j.Driver | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Neo4jGraph({self.uri!r}, user={self.user!r}, database={self.database!r})"

    def _open(self) -> neo4j.Driver:
        with self._lock:
            if self._driver is None:
                driver = neo4j.GraphDatabase.driver(
                    self.uri,
                    auth=(self.user, self._password),
                    connection_timeout=self._connection_timeout_s,
                    connection_acquisition_timeout=self._connection_timeout_s,
                )
                try:
                    with driver.session(database=self.database) as session:
                        for statement in CONSTRAINTS:
                            session.run(statement).consume()
                except BaseException:
                    driver.close()
                    raise
                self._driver = driver
            return self._driver

    def _reset(self, exc: BaseException | None = None) -> None:
        if exc is not None and isinstance(exc, Neo4jError):
            return  # the server answered: the connection is fine
        with self._lock:
            driver, self._driver = self._driver, None
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.close()

    def close(self) -> None:
        self._reset()

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Run]:
        mode = neo4j.WRITE_ACCESS if write else neo4j.READ_ACCESS
        with self._open().session(database=self.database, default_access_mode=mode) as session:
            tx = session.begin_transaction()

            def run(
                cypher: str, params: Mapping[str, Any] | None = None, *, limit: int | None = None
            ) -> list[dict[str, Any]]:
                result = tx.run(cypher, dict(params or {}))
                records = result if limit is None else islice(result, limit)
                rows = [_from_engine(record.data()) for record in records]
                result.consume()
                return [r for r in rows if isinstance(r, dict)]

            try:
                yield run
                tx.commit()
            finally:
                if not tx.closed():
                    with contextlib.suppress(Exception):
                        tx.rollback()
