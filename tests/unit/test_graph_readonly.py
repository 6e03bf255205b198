"""The read-only guard for ad-hoc graph queries (`learnloop graph query`), and the dataset helpers."""

from __future__ import annotations

import doctest

import pytest

from schemas.errors import GraphError, LearnloopError, ReadOnlyViolation
from workers.graph import dataset, queries
from workers.graph.queries import assert_read_only, fact_quality

ALLOWED = [
    "MATCH (n:Entity) RETURN n.name LIMIT 10",
    "match (n:Entity) return count(n)",
    "MATCH (n:Entity) WHERE n.name = 'create' RETURN n",
    'MATCH (n:Entity) WHERE n.name CONTAINS "DELETE everything; DROP TABLE x" RETURN n',
    "MATCH (n) WHERE n.name = 'it\\'s a SET' RETURN n",
    "MATCH (n) RETURN n // then CREATE (m)",
    "MATCH (n) /* MERGE (m) */ RETURN n",
    "MATCH (n) /* multi\nline\nDETACH DELETE n */ RETURN n",
    "MATCH (n) RETURN n.set, n.delete, n . remove",
    "MATCH (`create`:Entity) RETURN `create`.name",
    "MATCH (n:Entity) RETURN n;",
    "MATCH (n:Entity) RETURN n ;  \n",
    "MATCH (n:Entity) RETURN n; // trailing comment",
    "MATCH (a:Entity)-[r:RELATED]->(b) WHERE r.validated = true RETURN a.key, r.predicate, b.key ORDER BY a.key",
    "MATCH (n) WHERE n.key IN $keys RETURN n",
    "MATCH (n) WITH n ORDER BY n.mentions DESC RETURN collect(n.name)[..3]",
    "UNWIND [1, 2.5, 3e2, 0x1F] AS x RETURN x",
    "MATCH (n) WHERE n.created > 1 AND n.settled RETURN n.reset, n.offset",  # keywords inside longer names
    "CALL show_tables() RETURN *",
    "CALL table_info('Entity') RETURN *",
    "CALL db.labels() YIELD label RETURN label",
    "CALL dbms.components()",
    "MATCH (n) CALL { WITH n MATCH (n)-[:RELATED]->(m) RETURN count(m) AS c } RETURN n, c",
    "OPTIONAL MATCH (n:Entity {key: 'PERSON:ada'}) RETURN n",
    "MATCH p = shortestPath((a:Entity)-[*..3]-(b:Entity)) RETURN p",
    "SHOW INDEXES",
]

REFUSED = [
    ("CREATE (n:Entity {key: 'x'})", "CREATE"),
    ("match (n) /* x */ create (m)", "CREATE"),
    ("MaTcH (n) SeT n.name = 'x'", "SET"),
    ("MATCH (n) DETACH DELETE n", "DETACH"),
    ("MATCH (n) DELETE n", "DELETE"),
    ("MERGE (n:Entity {key: 'x'})", "MERGE"),
    ("MATCH (n) REMOVE n.name", "REMOVE"),
    ("DROP TABLE Entity", "DROP"),
    ("LOAD CSV FROM 'file:///x.csv' AS row RETURN row", "LOAD"),
    ("LOAD FROM 'x.csv' RETURN *", "LOAD"),
    ("COPY Entity FROM 'x.csv'", "COPY"),
    ("COPY (MATCH (n) RETURN n) TO '/tmp/out.csv'", "COPY"),
    ("INSTALL httpfs", "INSTALL"),
    ("ATTACH 'other.lbdb' AS other (dbtype lbug)", "ATTACH"),
    ("ALTER TABLE Entity ADD extra STRING", "ALTER"),
    ("EXPORT DATABASE '/tmp/x'", "EXPORT"),
    ("IMPORT DATABASE '/tmp/x'", "IMPORT"),
    ("MATCH (n) FOREACH (x IN [1] | SET n.a = x)", "FOREACH"),
    ("BEGIN TRANSACTION", "BEGIN"),
    ("COMMIT", "COMMIT"),
    ("USE other MATCH (n) RETURN n", "USE"),
    ("MATCH (n) RETURN n; MATCH (m) DELETE m", "one statement"),
    ("MATCH (n) RETURN n; MATCH (m) RETURN m", "one statement"),
    ("MATCH (n) WHERE n.name = 'a;b' RETURN n; CREATE (x)", "one statement"),
    ("MATCH (n) RETURN n /* ; */ ; MATCH (m) RETURN m", "one statement"),
    ("MATCH (n)\n// comment\nCREATE (m)", "CREATE"),
    ("MATCH (n) WHERE n.name = 'x' CREATE (m {name: 'RETURN'})", "CREATE"),
    ("MATCH (n) WITH n\tDELETE\nn", "DELETE"),
    ("MATCH (n) WITH 1.DELETE n", "DELETE"),
    ("CALL apoc.create.node(['X'], {})", "apoc.create.node"),
    ("CALL db.createLabel('X')", "db.createLabel"),
    ("CALL threads=4", "threads"),
    ("CALL create_fts_index('Entity', 'idx', ['name'])", "create_fts_index"),
    ("MATCH (n) CALL { WITH n SET n.x = 1 } RETURN n", "SET"),
    ("MATCH (n) CALL (n) { DELETE n } RETURN 1", "DELETE"),
    ("MATCH (n) WHERE n.name = 'unterminated RETURN n", "unterminated"),
    ("MATCH (n) /* never closed RETURN n", "unterminated"),
    ("MATCH (`n) RETURN 1", "unterminated"),
    ("", "empty"),
    ("  // only a comment", "empty"),
    (";", "empty"),
]


@pytest.mark.parametrize("cypher", ALLOWED)
def test_reads_are_allowed(cypher: str) -> None:
    assert_read_only(cypher)


@pytest.mark.parametrize(("cypher", "reason"), REFUSED)
def test_writes_and_tricks_are_refused(cypher: str, reason: str) -> None:
    with pytest.raises(ReadOnlyViolation, match=reason):
        assert_read_only(cypher)


def test_violation_is_a_typed_learnloop_error() -> None:
    assert issubclass(ReadOnlyViolation, GraphError)
    assert issubclass(ReadOnlyViolation, LearnloopError)


@pytest.mark.parametrize("keyword", sorted(queries.WRITE_KEYWORDS))
def test_every_write_keyword_in_any_case(keyword: str) -> None:
    for spelled in (keyword, keyword.lower(), keyword.capitalize()):
        with pytest.raises(ReadOnlyViolation):
            assert_read_only(f"MATCH (n) {spelled} n")
        assert_read_only(f"MATCH (n) WHERE n.name = '{spelled}' RETURN n.{spelled.lower()}")


def test_fact_quality_formula() -> None:
    assert fact_quality(0.8, 1, 2) == pytest.approx(0.2)
    assert fact_quality(0.8, 2, 2) == pytest.approx(0.4)
    assert fact_quality(0.8, 4, 2) == pytest.approx(0.8)
    assert fact_quality(0.8, 40, 2) == pytest.approx(0.8)
    assert fact_quality(1.5, 4, 2) == 1.0


@pytest.mark.parametrize("module", [queries, dataset])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.failed == 0 and result.attempted > 0
