"""The graph adapters against real engines: LadybugDB always, Neo4j when LEARNLOOP_NEO4J__URI is set.

Point LEARNLOOP_NEO4J__URI (with LEARNLOOP_NEO4J__USER, LEARNLOOP_NEO4J__PASSWORD)
at a throwaway database: each test deletes its Entity, Conversation and
SourceEvent nodes first.
"""

from __future__ import annotations

import doctest
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from learners.knowledge.model import Entity, Extraction, GraphBatch, Relation
from learners.knowledge.relations import RELATED_TO
from schemas.errors import BackPressureError, DuplicateEvents, GraphError, ReadOnlyViolation, StoreUnavailable
from streams.conversations import write_new
from workers.graph import CypherGraph, ladybug_store
from workers.graph.dataset import extract_dataset, write_jsonl
from workers.graph.ladybug_store import DB_FILE, LadybugGraph
from workers.graph.neo4j_store import Neo4jGraph

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def ent(name: str, label: str = "PERSON") -> Entity:
    return Entity(f"{label}:{name.lower()}", name, label)


ADA, BABBAGE, ENGINE = ent("Ada Lovelace"), ent("Charles Babbage"), ent("Analytical Engine", "PRODUCT")
LONDON = ent("London", "GPE")

Fact = tuple[Entity, str, Entity, float]


def ex(event_id: str, conv: str, minutes: int, mentions: dict[Entity, int], facts: tuple[Fact, ...] = ()) -> Extraction:
    return Extraction(
        event_id,
        conv,
        T0 + timedelta(minutes=minutes),
        tuple(mentions),
        tuple((e.key, n) for e, n in mentions.items()),
        tuple(Relation(s.key, p, o.key, c, "svo") for s, p, o, c in facts),
    )


def neo4j_graph(**kw: Any) -> Neo4jGraph:
    env = os.environ
    g = Neo4jGraph(
        env["LEARNLOOP_NEO4J__URI"],
        env.get("LEARNLOOP_NEO4J__USER", "neo4j"),
        env.get("LEARNLOOP_NEO4J__PASSWORD", ""),
        env.get("LEARNLOOP_NEO4J__DATABASE") or None,
        **kw,
    )
    with g._transaction(write=True) as run:
        run("MATCH (n) WHERE n:Entity OR n:Conversation OR n:SourceEvent DETACH DELETE n")
    return g


@pytest.fixture(
    params=[
        "ladybug",
        pytest.param(
            "neo4j",
            marks=pytest.mark.skipif(not os.environ.get("LEARNLOOP_NEO4J__URI"), reason="LEARNLOOP_NEO4J__URI not set"),
        ),
    ]
)
def make_graph(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., CypherGraph]]:
    made: list[CypherGraph] = []

    def make(**kw: Any) -> CypherGraph:
        kw = {"min_support": 2, "min_confidence": 0.5, "retries": 2, "backoff_s": 0.01, **kw}
        # threads=1: as the conversation worker opens it (settings.graph.threads)
        g: CypherGraph = (
            LadybugGraph(tmp_path / "graph", threads=1, **kw) if request.param == "ladybug" else neo4j_graph(**kw)
        )
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


@pytest.fixture
def graph(make_graph: Callable[..., CypherGraph]) -> CypherGraph:
    return make_graph()


def related(g: CypherGraph, s: Entity, p: str, o: Entity) -> dict[str, Any]:
    rows = g.query(
        "MATCH (a:Entity {key: $s})-[r:RELATED]->(b:Entity {key: $o}) WHERE r.predicate = $p "
        "RETURN r.confidence AS confidence, r.support AS support, r.validated AS validated, "
        "r.conversations AS conversations, r.event_ids AS event_ids, r.first_seen AS first_seen, "
        "r.last_seen AS last_seen",
        {"s": s.key, "p": p, "o": o.key},
    )
    assert len(rows) == 1, rows
    return rows[0]


def mention_counts(g: CypherGraph) -> dict[tuple[str, str], int]:
    rows = g.query("MATCH (c:Conversation)-[m:MENTIONS]->(e:Entity) RETURN c.id AS c, e.key AS k, m.count AS n")
    return {(r["c"], r["k"]): int(r["n"]) for r in rows}


def snapshot(g: CypherGraph) -> tuple[Any, ...]:
    facts = g.query(
        "MATCH (a:Entity)-[r:RELATED]->(b:Entity) RETURN a.key AS sk, r.predicate AS p, b.key AS ok, "
        "r.support AS s, r.confidence AS c, r.event_ids AS ev ORDER BY sk, p, ok"
    )
    ents = g.query(
        "MATCH (e:Entity) RETURN e.key AS k, e.mentions AS m, e.first_seen AS f, e.last_seen AS l ORDER BY k"
    )
    return g.stats(), ents, facts, mention_counts(g)


BATCH1 = [
    ex("e1", "c1", 0, {ADA: 2, BABBAGE: 1}, ((ADA, "worked_with", BABBAGE, 0.6),)),
    ex("e2", "c1", 5, {ADA: 1, ENGINE: 1}, ((ADA, "wrote_about", ENGINE, 0.9),)),
]
BATCH2 = [
    ex("e3", "c2", 10, {ADA: 1, BABBAGE: 1}, ((ADA, "worked_with", BABBAGE, 0.8),)),
    ex("e4", "c1", -5, {ADA: 1}),
    ex("e5", "c1", 7, {ADA: 1, ENGINE: 1}, ((ADA, "wrote_about", ENGINE, 0.7),)),
]


def test_counts_after_two_batches(graph: CypherGraph) -> None:
    assert graph.write(GraphBatch.fold(BATCH1)) == ["e1", "e2"]
    first = related(graph, ADA, "worked_with", BABBAGE)
    assert (first["support"], first["validated"]) == (1, False)

    ids, validated = graph.write_validated(GraphBatch.fold(BATCH2))
    assert ids == ["e3", "e4", "e5"]
    ada = graph.entity(ADA.key)
    assert ada is not None
    assert ada["mentions"] == 2 + 1 + 1 + 1 + 1
    assert (ada["first_seen"], ada["last_seen"]) == (T0 - timedelta(minutes=5), T0 + timedelta(minutes=10))
    assert ada["conversations"] == 2
    assert mention_counts(graph) == {
        ("c1", ADA.key): 5, ("c1", BABBAGE.key): 1, ("c1", ENGINE.key): 2, ("c2", ADA.key): 1, ("c2", BABBAGE.key): 1,
    }  # fmt: skip

    assert validated == {(ADA.key, "worked_with", BABBAGE.key)}  # of the batch's facts, the one now validated
    worked = related(graph, ADA, "worked_with", BABBAGE)
    assert (worked["support"], worked["confidence"], worked["validated"]) == (2, 0.8, True)
    assert sorted(worked["conversations"]) == ["c1", "c2"] and worked["event_ids"] == ["e1", "e3"]
    assert (worked["first_seen"], worked["last_seen"]) == (T0, T0 + timedelta(minutes=10))
    # the same conversation asserting a fact again adds no support, across batches
    wrote = related(graph, ADA, "wrote_about", ENGINE)
    assert (wrote["support"], wrote["confidence"], wrote["validated"]) == (1, 0.9, False)
    assert graph.stats() == {
        "entities": 3, "relations": 2, "validated_relations": 1, "conversations": 2, "events": 5,
        "by_label": {"PERSON": 2, "PRODUCT": 1},
    }  # fmt: skip


def test_validation_needs_confidence_too(make_graph: Callable[..., CypherGraph]) -> None:
    g = make_graph(min_support=2, min_confidence=0.75)
    g.write(GraphBatch.fold([ex("a", "c1", 0, {ADA: 1, LONDON: 1}, ((ADA, "lived_in", LONDON, 0.5),))]))
    g.write(GraphBatch.fold([ex("b", "c2", 1, {ADA: 1, LONDON: 1}, ((ADA, "lived_in", LONDON, 0.6),))]))
    assert related(g, ADA, "lived_in", LONDON)["validated"] is False  # support 2, confidence 0.6
    g.write(GraphBatch.fold([ex("c", "c2", 2, {ADA: 1, LONDON: 1}, ((ADA, "lived_in", LONDON, 0.8),))]))
    assert related(g, ADA, "lived_in", LONDON)["validated"] is True


@pytest.mark.parametrize(
    ("predicate", "confidences", "validated"),
    [
        ("role_at", (0.85, 0.85), False),  # support 2 of 3
        ("role_at", (0.85, 0.85, 0.85), True),
        ("uses", (0.5,) * 5, False),  # seen often, never confident enough
        (RELATED_TO, (0.3,) * 5, False),  # co-occurrence is never a fact, however often
    ],
)
def test_validated_needs_confidence_and_support_and_never_co_occurrence(
    make_graph: Callable[..., CypherGraph], predicate: str, confidences: tuple[float, ...], validated: bool
) -> None:
    g = make_graph(min_support=3, min_confidence=0.6)
    for i, c in enumerate(confidences):  # one conversation each
        g.write(GraphBatch.fold([ex(f"e{i}", f"c{i}", i, {ADA: 1, LONDON: 1}, ((ADA, predicate, LONDON, c),))]))
    edge = related(g, ADA, predicate, LONDON)
    assert (edge["support"], edge["validated"]) == (len(confidences), validated)
    low = make_graph(min_support=1, min_confidence=0.1)  # even with a threshold below its confidence
    low.write(GraphBatch.fold([ex("x", "c", 0, {ADA: 1, BABBAGE: 1}, ((ADA, RELATED_TO, BABBAGE, 0.3),))]))
    assert related(low, ADA, RELATED_TO, BABBAGE)["validated"] is False


def test_redelivery_changes_no_count(graph: CypherGraph) -> None:
    graph.write(GraphBatch.fold(BATCH1))
    before = snapshot(graph)
    assert graph.write(GraphBatch.fold(BATCH1)) == []  # the whole batch again
    assert write_new(graph, BATCH1) == ([], set())
    assert snapshot(graph) == before

    with pytest.raises(DuplicateEvents) as err:  # a batch that overlaps: nothing of it is written
        graph.write(GraphBatch.fold([BATCH1[0], *BATCH2]))
    assert err.value.event_ids == {"e1"}
    assert snapshot(graph) == before
    with pytest.raises(ValueError, match="repeats event ids"):
        graph.write(GraphBatch.fold([BATCH2[0], BATCH2[0]]))

    # the agent's path: known events dropped, duplicates in one poll counted once
    assert graph.known_events(["e1", "e3", "zz"]) == {"e1"}
    assert [x.event_id for x in write_new(graph, [*BATCH1, *BATCH2, BATCH2[0]])[0]] == ["e3", "e4", "e5"]
    assert write_new(graph, [*BATCH1, *BATCH2]) == ([], set())
    assert graph.entity(ADA.key)["mentions"] == 6  # type: ignore[index]
    assert related(graph, ADA, "worked_with", BABBAGE)["support"] == 2


def test_a_relation_to_an_unknown_entity_writes_nothing(graph: CypherGraph) -> None:
    graph.write(GraphBatch.fold(BATCH1))
    before = snapshot(graph)
    orphan = Extraction(
        "o1", "c3", T0, (ADA,), ((ADA.key, 1),), (Relation(ADA.key, "met", "PERSON:nobody", 0.9, "svo"),)
    )
    with pytest.raises(GraphError, match="neither in the batch nor in the graph"):
        graph.write(GraphBatch.fold([orphan]))
    assert snapshot(graph) == before and graph.known_events(["o1"]) == set()


def test_a_key_repeated_across_a_batch_counts_right(graph: CypherGraph) -> None:
    # the embedded engine miscounts a key repeated inside one UNWIND: the fold must aggregate first
    facts: list[tuple[Fact, ...]] = [
        ((ADA, "designed", ENGINE, 0.5 + i / 100), (ADA, "used", ENGINE, 0.6)) for i in range(40)
    ]
    many = [ex(f"r{i}", f"c{i % 5}", i, {ADA: 2, ENGINE: 1}, facts[i]) for i in range(40)]
    assert len(graph.write(GraphBatch.fold(many))) == 40
    assert graph.entity(ADA.key)["mentions"] == 80  # type: ignore[index]
    expected = {(f"c{i}", ADA.key): 16 for i in range(5)} | {(f"c{i}", ENGINE.key): 8 for i in range(5)}
    assert mention_counts(graph) == expected
    designed = related(graph, ADA, "designed", ENGINE)
    assert (designed["support"], designed["confidence"], len(designed["event_ids"])) == (5, 0.89, 40)
    assert graph.stats()["relations"] == 2  # same pair, two predicates: two edges

    more = [ex(f"s{i}", "c9", 100 + i, {ADA: 1, ENGINE: 1}, ((ADA, "designed", ENGINE, 0.5),)) for i in range(70)]
    graph.write(GraphBatch.fold(more))
    designed = related(graph, ADA, "designed", ENGINE)
    assert designed["support"] == 6
    assert designed["event_ids"] == [f"r{i}" for i in range(10, 40)] + [f"s{i}" for i in range(70)]  # newest 100


def test_read_side(graph: CypherGraph) -> None:
    graph.write(GraphBatch.fold(BATCH1 + BATCH2))
    babbage = graph.entity("charles BABBAGE")  # by name, any case
    assert babbage is not None and babbage["key"] == BABBAGE.key and babbage["label"] == "PERSON"
    assert [(n["direction"], n["predicate"], n["key"]) for n in babbage["neighbours"]] == [
        ("in", "worked_with", ADA.key)
    ]
    ada = graph.entity(ADA.key)
    assert ada is not None
    out = {n["predicate"]: n for n in ada["neighbours"]}
    assert out["worked_with"]["direction"] == "out" and out["worked_with"]["validated"] is True
    assert out["wrote_about"]["support"] == 1 and out["wrote_about"]["confidence"] == 0.9
    assert graph.entity("nobody") is None

    rows = graph.query("MATCH (e:Entity) RETURN e.key AS key ORDER BY key;")
    assert [r["key"] for r in rows] == sorted([ADA.key, BABBAGE.key, ENGINE.key])
    assert len(graph.query("MATCH (e:Entity) RETURN e.key AS key", limit=2)) == 2
    assert graph.query("MATCH (e:Entity) WHERE e.name = 'create' RETURN e") == []

    before = snapshot(graph)
    for cypher in ("MATCH (n:Entity) DETACH DELETE n", "match (n) /* x */ create (m:Entity {key: 'x'})",
                   "MATCH (n:Entity) RETURN n; MATCH (n:Entity) DELETE n"):  # fmt: skip
        with pytest.raises(ReadOnlyViolation):
            graph.query(cypher)
    # below the guard, the engine itself refuses writes in a read transaction
    with pytest.raises(graph.ENGINE_ERRORS), graph._transaction(write=False) as run:
        run("CREATE (:Conversation {id: 'sneaky'})")
    with pytest.raises(GraphError, match="query failed"):
        graph.query("MATCH (n:NoSuchLabel RETURN n")
    assert snapshot(graph) == before


@contextmanager
def failing(graph: CypherGraph, monkeypatch: pytest.MonkeyPatch, times: int) -> Iterator[list[int]]:
    """Make the relations statement of a batch fail ``times`` times, after the entities were merged."""
    real = graph._transaction
    failures = [0]

    @contextmanager
    def transaction(*, write: bool) -> Iterator[Any]:
        with real(write=write) as run:

            def flaky(cypher: str, params: Any = None, *, limit: int | None = None) -> list[dict[str, Any]]:
                if cypher == graph.MERGE_RELATED and failures[0] < times:
                    failures[0] += 1
                    raise OSError("injected outage")
                return run(cypher, params, limit=limit)

            yield flaky

    monkeypatch.setattr(graph, "_transaction", transaction)
    yield failures
    monkeypatch.undo()


def test_outage_mid_batch_rolls_back_then_retries(graph: CypherGraph, monkeypatch: pytest.MonkeyPatch) -> None:
    with failing(graph, monkeypatch, times=99) as failures, pytest.raises(BackPressureError, match="3 time"):
        graph.write(GraphBatch.fold(BATCH1))
    assert failures == [3]  # 1 + retries, bounded
    assert graph.stats()["entities"] == 0 and graph.known_events(["e1", "e2"]) == set()  # nothing half-written

    with failing(graph, monkeypatch, times=2):  # recovers within the retries
        assert graph.write(GraphBatch.fold(BATCH1)) == ["e1", "e2"]
    assert graph.entity(ADA.key)["mentions"] == 3  # type: ignore[index]
    assert graph.stats()["events"] == 2


HOLD_LOCK = "import ladybug, sys; db = ladybug.Database(sys.argv[1]); print('held', flush=True); sys.stdin.read()"


def test_ladybug_locked_by_another_process_pauses_without_loss(tmp_path: Path) -> None:
    g = LadybugGraph(tmp_path / "graph", retries=2, backoff_s=0.01)
    g.write(GraphBatch.fold(BATCH1))
    g.close()  # releases the file lock; another process takes it
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "graph" / DB_FILE)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as holder:  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with pytest.raises(BackPressureError, match="lock"):
                g.write(GraphBatch.fold(BATCH2))
            with pytest.raises(StoreUnavailable):
                g.stats()
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
    assert g.write(GraphBatch.fold(BATCH2)) == ["e3", "e4", "e5"]  # the caller's retry after the pause
    assert g.stats()["events"] == 5 and g.entity(ADA.key)["mentions"] == 6  # type: ignore[index]
    g.close()


def test_ladybug_read_only_next_to_a_writer(tmp_path: Path) -> None:
    writer = LadybugGraph(tmp_path / "graph")
    writer.write(GraphBatch.fold(BATCH1))
    reader = LadybugGraph(tmp_path / "graph", read_only=True)
    assert reader.stats()["entities"] == 3
    with pytest.raises(ReadOnlyViolation):
        reader.write(GraphBatch.fold(BATCH2))
    reader.close()
    writer.close()
    with pytest.raises(StoreUnavailable, match="no graph"):
        LadybugGraph(tmp_path / "elsewhere", read_only=True).stats()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_neo4j_unreachable_is_back_pressure() -> None:
    g = Neo4jGraph(f"bolt://127.0.0.1:{free_port()}", "neo4j", "pw", retries=1, backoff_s=0.01, connection_timeout_s=1)
    with pytest.raises(BackPressureError, match="2 time"):
        g.write(GraphBatch.fold(BATCH1))
    with pytest.raises(BackPressureError):
        g.known_events(["e1"])
    with pytest.raises(StoreUnavailable):
        g.stats()
    g.close()


def test_dataset_extraction(graph: CypherGraph, tmp_path: Path) -> None:
    facts: list[Extraction] = []
    for i in range(4):
        facts.append(ex(f"w{i}", f"c{i}", i, {ADA: 1, BABBAGE: 1}, ((ADA, "worked_with", BABBAGE, 0.9),)))
        facts.append(ex(f"d{i}", f"c{i}", i, {BABBAGE: 1, ENGINE: 1}, ((BABBAGE, "designed", ENGINE, 0.7),)))
    for i in range(2):
        facts.append(ex(f"a{i}", f"c{i}", i, {ADA: 1, ENGINE: 1}, ((ADA, "wrote_about", ENGINE, 0.9),)))
    facts.append(ex("l0", "c0", 0, {ADA: 1, LONDON: 1}, ((ADA, "lived_in", LONDON, 0.9),)))  # support 1: not validated
    graph.write(GraphBatch.fold(facts))

    strict = extract_dataset(graph, quality_threshold=0.5)
    assert [(r["output"], r["quality"]) for r in strict] == [
        ("Ada Lovelace worked with Charles Babbage.", 0.9),
        ("Charles Babbage designed Analytical Engine.", 0.7),
        ("Ada Lovelace worked with Charles Babbage. Charles Babbage designed Analytical Engine.", 0.8),
    ]
    assert strict[0]["instruction"] == "What is the relationship between Ada Lovelace and Charles Babbage?"
    assert strict[0]["input"] == "Ada Lovelace (person), Charles Babbage (person)"
    assert strict[2]["instruction"] == "Who is Charles Babbage?"

    loose = extract_dataset(graph, quality_threshold=0.0)
    assert [r["instruction"] for r in loose[3:]] == [
        "Who is Ada Lovelace?",  # entity records by key: PERSON:... before PRODUCT:...
        "Who is Charles Babbage?",
        "What is Analytical Engine?",
    ]
    assert loose == extract_dataset(graph, quality_threshold=0.0)
    assert all(0.0 <= r["quality"] <= 1.0 for r in loose) and len(loose) == 6

    out = tmp_path / "data" / "facts.jsonl"
    assert write_jsonl(strict, out) == 3
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == strict
    assert set(json.loads(lines[0])) == {"instruction", "input", "output", "quality"}


def test_ladybug_doctest() -> None:
    assert doctest.testmod(ladybug_store).failed == 0
