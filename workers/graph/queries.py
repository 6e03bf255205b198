"""Cypher shared by both graph adapters, and the guard that keeps ad-hoc queries read-only.

Both engines speak the same Cypher for everything but the list arithmetic on
``RELATED`` (Neo4j has list comprehensions, LadybugDB has ``list_distinct``), so
each adapter builds its ``MERGE_RELATED`` with :func:`merge_related` and shares the rest.

``MATCH (a ...) MATCH (b ...)`` rather than ``MATCH (a ...), (b ...)``: LadybugDB
plans the comma form as a cross product (~1k rel merges/s instead of ~20k/s for a
bare ``MERGE``; the full ``RELATED`` upsert here runs at ~5-10k rows/s on 2 cores).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar, Protocol

from learners.knowledge.relations import RELATED_TO
from schemas.errors import GraphError, ReadOnlyViolation, StoreUnavailable

EVENT_IDS_KEPT = 100
"""Provenance on a ``RELATED`` edge keeps only the newest event ids, so an edge stays small."""

# --- write side (one transaction per batch; rows are already one per key) ---------------

KNOWN_EVENTS = "UNWIND $ids AS id MATCH (s:SourceEvent {id: id}) RETURN s.id AS id"

CREATE_EVENTS = "UNWIND $ids AS id CREATE (:SourceEvent {id: id, written_at: $now})"

MERGE_CONVERSATIONS = "UNWIND $ids AS id MERGE (:Conversation {id: id})"

MERGE_ENTITIES = """
UNWIND $rows AS r
MERGE (e:Entity {key: r.key})
ON CREATE SET e.name = r.name, e.label = r.label, e.mentions = r.mentions,
              e.first_seen = r.first_seen, e.last_seen = r.last_seen
ON MATCH SET e.mentions = e.mentions + r.mentions,
             e.first_seen = CASE WHEN r.first_seen < e.first_seen THEN r.first_seen ELSE e.first_seen END,
             e.last_seen = CASE WHEN r.last_seen > e.last_seen THEN r.last_seen ELSE e.last_seen END
"""

MERGE_MENTIONS = """
UNWIND $rows AS r
MATCH (c:Conversation {id: r.conversation_id})
MATCH (e:Entity {key: r.key})
MERGE (c)-[m:MENTIONS]->(e)
ON CREATE SET m.count = r.count
ON MATCH SET m.count = m.count + r.count
"""

_MERGE_RELATED = """
UNWIND $rows AS r
MATCH (a:Entity {key: r.subject})
MATCH (b:Entity {key: r.object})
MERGE (a)-[x:RELATED {predicate: r.predicate}]->(b)
ON CREATE SET x.support = size(r.conversations),
              x.validated = size(r.conversations) >= $min_support AND r.confidence >= $min_confidence
                            AND r.predicate <> 'CO_OCCURRENCE',
              x.confidence = r.confidence, x.conversations = r.conversations,
              x.event_ids = r.event_ids[-KEPT..],
              x.first_seen = r.first_seen, x.last_seen = r.last_seen
ON MATCH SET x.support = size(UNION),
             x.validated = size(UNION) >= $min_support AND MAX_CONFIDENCE >= $min_confidence
                           AND r.predicate <> 'CO_OCCURRENCE',
             x.confidence = MAX_CONFIDENCE,
             x.conversations = UNION,
             x.event_ids = (x.event_ids + r.event_ids)[-KEPT..],
             x.first_seen = CASE WHEN r.first_seen < x.first_seen THEN r.first_seen ELSE x.first_seen END,
             x.last_seen = CASE WHEN r.last_seen > x.last_seen THEN r.last_seen ELSE x.last_seen END
RETURN a.key AS subject, x.predicate AS predicate, b.key AS object, x.validated AS validated
"""


def merge_related(union: str) -> str:
    """The ``RELATED`` upsert, given the engine's expression for "x.conversations plus r.conversations, distinct".

    ``support`` is the number of distinct conversations, so it is right under
    redelivery and across batches; ``validated`` is recomputed on every write:
    validation stages 2 and 3 (confidence, support), never for co-occurrence
    (``related_to`` is a hint for exploration, not a fact). This is the only place
    the rule lives.
    Every expression gives the same value whether or not the engine applies the
    earlier items of the ``SET`` first, and computing them inline (instead of a
    second ``WITH x SET`` pass) doubles LadybugDB's throughput.
    """
    max_confidence = "CASE WHEN r.confidence > x.confidence THEN r.confidence ELSE x.confidence END"
    return (
        _MERGE_RELATED.replace("KEPT", str(EVENT_IDS_KEPT))
        .replace("CO_OCCURRENCE", RELATED_TO)
        .replace("MAX_CONFIDENCE", max_confidence)
        .replace("UNION", union)
    )


# --- read side -----------------------------------------------------------------------------

COUNT_ENTITIES = "MATCH (e:Entity) RETURN count(e) AS n"
COUNT_RELATIONS = (
    "MATCH (:Entity)-[r:RELATED]->(:Entity) "
    "RETURN count(r) AS n, count(CASE WHEN r.validated = true THEN 1 END) AS validated"
)
COUNT_CONVERSATIONS = "MATCH (c:Conversation) RETURN count(c) AS n"
COUNT_EVENTS = "MATCH (s:SourceEvent) RETURN count(s) AS n"
COUNT_BY_LABEL = "MATCH (e:Entity) RETURN e.label AS label, count(e) AS n ORDER BY label"

_ENTITY_FIELDS = (
    "e.key AS key, e.name AS name, e.label AS label, e.mentions AS mentions, "
    "e.first_seen AS first_seen, e.last_seen AS last_seen"
)
ENTITY_BY_KEY = f"MATCH (e:Entity {{key: $key}}) RETURN {_ENTITY_FIELDS}"
ENTITY_BY_NAME = (
    f"MATCH (e:Entity) WHERE toLower(e.name) = toLower($name) RETURN {_ENTITY_FIELDS} "
    "ORDER BY mentions DESC, key LIMIT 1"
)
ENTITY_CONVERSATIONS = "MATCH (c:Conversation)-[m:MENTIONS]->(e:Entity {key: $key}) RETURN count(c) AS n"

_NEIGHBOUR_FIELDS = (
    "r.predicate AS predicate, n.key AS key, n.name AS name, n.label AS label, "
    "r.confidence AS confidence, r.support AS support, r.validated AS validated, "
    "r.first_seen AS first_seen, r.last_seen AS last_seen"
)
NEIGHBOURS_OUT = (
    f"MATCH (e:Entity {{key: $key}})-[r:RELATED]->(n:Entity) RETURN {_NEIGHBOUR_FIELDS} ORDER BY predicate, key"
)
NEIGHBOURS_IN = (
    f"MATCH (e:Entity {{key: $key}})<-[r:RELATED]-(n:Entity) RETURN {_NEIGHBOUR_FIELDS} ORDER BY predicate, key"
)

VALIDATED_FACTS = """
MATCH (a:Entity)-[r:RELATED]->(b:Entity)
WHERE r.validated = true
RETURN a.key AS subject, a.name AS subject_name, a.label AS subject_label,
       r.predicate AS predicate,
       b.key AS object, b.name AS object_name, b.label AS object_label,
       r.confidence AS confidence, r.support AS support,
       r.first_seen AS first_seen, r.last_seen AS last_seen
ORDER BY subject, predicate, object
"""


def fact_quality(confidence: float, support: int, min_support: int) -> float:
    """Quality of a fact in 0..1: ``confidence * min(1, support / (2 * min_support))``.

    A fact that just reached ``min_support`` counts half; twice that many
    conversations give it full credit.

    >>> fact_quality(0.9, 2, 2), fact_quality(0.9, 4, 2), fact_quality(0.9, 9, 2)
    (0.45, 0.9, 0.9)
    """
    return round(max(0.0, min(1.0, confidence)) * min(1.0, support / (2 * max(1, min_support))), 6)


# --- the read-only guard ---------------------------------------------------------------------

WRITE_KEYWORDS = frozenset(
    {
        "CREATE", "MERGE", "DELETE", "DETACH", "SET", "REMOVE", "DROP", "LOAD", "COPY", "INSTALL", "UNINSTALL",
        "ATTACH", "ALTER", "IMPORT", "EXPORT", "FOREACH", "BEGIN", "COMMIT", "ROLLBACK", "CHECKPOINT", "USE",
        "GRANT", "REVOKE", "DENY", "TERMINATE",
    }
)  # fmt: skip
"""Clauses refused anywhere outside strings and comments (``FOREACH`` only exists to write)."""

READ_PROCEDURES = frozenset(
    {
        # LadybugDB
        "show_tables", "table_info", "show_connection", "db_version", "current_setting",
        "show_functions", "show_indexes", "show_attached_databases", "show_sequences",
        "show_loaded_extensions", "show_official_extensions", "show_macros", "show_projected_graphs",
        # Neo4j
        "db.labels", "db.relationshiptypes", "db.propertykeys", "db.schema.visualization",
        "db.schema.nodetypeproperties", "db.schema.reltypeproperties", "db.info", "db.ping",
        "dbms.components",
    }
)  # fmt: skip
"""Procedures that only read; ``CALL`` of anything else is refused (subqueries ``CALL {`` are checked inside)."""

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<line>//[^\n]*)
    | (?P<block>/\*.*?\*/)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<quoted>`(?:[^`]|``)*`)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<num>0[xX][0-9A-Fa-f]+|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
    | (?P<param>\$[A-Za-z0-9_]+)
    | (?P<semi>;)
    | (?P<open>/\*|['"`])
    | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(cypher: str) -> list[tuple[str, str]]:
    """(kind, text) of the code, with whitespace, comments and string literals dropped."""
    out: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(cypher):
        kind = m.lastgroup or "punct"
        if kind == "open":
            raise ReadOnlyViolation(f"unterminated string, identifier or comment at offset {m.start()}")
        if kind not in ("ws", "line", "block", "str"):
            out.append((kind, m.group()))
    return out


def assert_read_only(cypher: str) -> None:
    """Raise ``ReadOnlyViolation`` unless ``cypher`` is one statement that only reads.

    Keywords count outside string literals, backquoted names and comments, in any
    case; a property that happens to be called like a clause (``n.set``) is fine.
    This is a first line of defence: the adapters also run the query in a
    read-only transaction (LadybugDB) or session (Neo4j).

    >>> assert_read_only("MATCH (n:Entity) WHERE n.name = 'create' RETURN n")
    >>> assert_read_only("match (n) /* x */ create (m)")
    Traceback (most recent call last):
    ...
    schemas.errors.ReadOnlyViolation: read-only query refused: CREATE is a write clause
    """
    toks = _tokens(cypher)
    if toks and toks[-1][0] == "semi":
        toks.pop()
    if not toks:
        raise ReadOnlyViolation("read-only query refused: the query is empty")
    for i, (kind, text) in enumerate(toks):
        if kind == "semi":
            raise ReadOnlyViolation("read-only query refused: one statement only (';' separates several)")
        if kind != "word":
            continue
        upper = text.upper()
        if i >= 2 and toks[i - 1][1] == "." and toks[i - 2][0] in ("word", "quoted"):
            continue  # property access such as n.set
        if upper in WRITE_KEYWORDS:
            raise ReadOnlyViolation(f"read-only query refused: {upper} is a write clause")
        if upper == "CALL":
            name = _procedure_name(toks, i + 1)
            if name is not None and name.lower() not in READ_PROCEDURES:
                raise ReadOnlyViolation(f"read-only query refused: procedure {name} is not known to be read-only")


def _procedure_name(toks: list[tuple[str, str]], start: int) -> str | None:
    """The dotted name after ``CALL``, or None for a subquery (``CALL {`` / ``CALL (x) {``)."""
    if start >= len(toks) or toks[start][1] in ("{", "("):
        return None
    parts: list[str] = []
    j = start
    while j < len(toks) and toks[j][0] in ("word", "quoted"):
        parts.append(toks[j][1].strip("`"))
        if j + 1 < len(toks) and toks[j + 1][1] == ".":
            j += 2
        else:
            break
    return ".".join(parts) if parts else toks[start][1]


# --- the read side, on top of an adapter's transaction ---------------------------------------


class Run(Protocol):
    """Runs one statement in the current transaction; rows as dicts of plain Python values (UTC datetimes)."""

    def __call__(
        self, cypher: str, params: Mapping[str, Any] | None = None, *, limit: int | None = None
    ) -> list[dict[str, Any]]: ...


class GraphReader(ABC):
    """``stats``, ``entity``, ``query`` and ``validated_facts``, the same on every engine."""

    ENGINE_ERRORS: ClassVar[tuple[type[BaseException], ...]]
    min_support: int

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Run]:
        """One transaction: commits when the block exits normally, rolls back otherwise."""

    @abstractmethod
    def _reset(self, exc: BaseException) -> None:
        """Forget a connection that failed, so the next attempt opens a fresh one."""

    @contextmanager
    def _reading(self) -> Iterator[Run]:
        try:
            with self._transaction(write=False) as run:
                yield run
        except self.ENGINE_ERRORS as exc:
            self._reset(exc)
            raise StoreUnavailable(f"graph read failed: {type(exc).__name__}: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        """Counts: entities, relations, validated relations, conversations, events, entities by label."""
        with self._reading() as run:
            relations = run(COUNT_RELATIONS)[0]
            return {
                "entities": int(run(COUNT_ENTITIES)[0]["n"]),
                "relations": int(relations["n"]),
                "validated_relations": int(relations["validated"]),
                "conversations": int(run(COUNT_CONVERSATIONS)[0]["n"]),
                "events": int(run(COUNT_EVENTS)[0]["n"]),
                "by_label": {str(r["label"]): int(r["n"]) for r in run(COUNT_BY_LABEL)},
            }

    def entity(self, name_or_key: str) -> dict[str, Any] | None:
        """The entity with this key, else the most mentioned one with this name (any case), with neighbours.

        ``neighbours`` lists both directions (``direction`` is ``out`` when the
        entity is the subject), each with predicate, confidence, support and validated.
        """
        with self._reading() as run:
            rows = run(ENTITY_BY_KEY, {"key": name_or_key}) or run(ENTITY_BY_NAME, {"name": name_or_key})
            if not rows:
                return None
            found = rows[0]
            key = {"key": found["key"]}
            found["conversations"] = int(run(ENTITY_CONVERSATIONS, key)[0]["n"])
            found["neighbours"] = [{"direction": "out", **r} for r in run(NEIGHBOURS_OUT, key)] + [
                {"direction": "in", **r} for r in run(NEIGHBOURS_IN, key)
            ]
            return found

    def query(self, cypher: str, params: Mapping[str, Any] | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Run a read-only query (``ReadOnlyViolation`` otherwise); at most ``limit`` rows."""
        assert_read_only(cypher)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        try:
            with self._transaction(write=False) as run:
                return run(cypher, params, limit=limit)
        except self.ENGINE_ERRORS as exc:
            raise GraphError(f"query failed: {exc}") from exc

    def validated_facts(self, min_quality: float = 0.0) -> list[dict[str, Any]]:
        """Validated relations with names, labels and ``quality`` (see :func:`fact_quality`), sorted by key."""
        with self._reading() as run:
            rows = run(VALIDATED_FACTS)
        facts = []
        for r in rows:
            r["quality"] = fact_quality(float(r["confidence"]), int(r["support"]), self.min_support)
            if r["quality"] >= min_quality:
                facts.append(r)
        return sorted(facts, key=lambda f: (f["subject"], f["predicate"], f["object"]))
