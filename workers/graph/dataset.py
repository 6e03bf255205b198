"""Validated graph facts as instruction-style training records (``learnloop dataset extract``).

Two kinds of record, each ``{"instruction", "input", "output", "quality"}``:

- one per validated fact: "What is the relationship between S and O?" ->
  "S <predicate words> O.";
- one per entity that takes part in at least two such facts: "Who is X?"
  (people) or "What is X?" -> its facts as sentences, best first (at most 10).

``quality`` of a fact is ``confidence * min(1, support / (2 * min_support))``
(:func:`workers.graph.queries.fact_quality`); an entity record's quality is the
mean of the facts it uses. Only records with ``quality >= quality_threshold``
are kept (an entity record is built from facts that pass the threshold). The
order is deterministic: facts by (subject, predicate, object), then entities
by key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

MAX_SENTENCES = 10

LABEL_WORDS = {
    "PERSON": "person",
    "ORG": "organisation",
    "GPE": "place",
    "LOC": "place",
    "FAC": "facility",
    "NORP": "group",
    "PRODUCT": "product",
    "EVENT": "event",
    "WORK_OF_ART": "work",
    "LAW": "law",
    "LANGUAGE": "language",
}


class FactSource(Protocol):
    def validated_facts(self, min_quality: float = 0.0) -> list[dict[str, Any]]: ...


def label_words(label: str) -> str:
    """A spaCy label as a reader would say it.

    >>> label_words("ORG"), label_words("WORK_OF_ART"), label_words("SPACECRAFT")
    ('organisation', 'work', 'spacecraft')
    """
    return LABEL_WORDS.get(label, label.replace("_", " ").lower())


def predicate_words(predicate: str) -> str:
    """``works_for``, ``WORKS-FOR`` and ``works for`` all read "works for".

    >>> predicate_words("WORKS_FOR"), predicate_words("born-in")
    ('works for', 'born in')
    """
    return " ".join(re.split(r"[\s_\-]+", predicate.strip())).lower()


def sentence(fact: dict[str, Any]) -> str:
    return f"{fact['subject_name']} {predicate_words(str(fact['predicate']))} {fact['object_name']}."


def extract_dataset(graph: FactSource, *, quality_threshold: float) -> list[dict[str, Any]]:
    """Training records from the graph's validated facts, ``quality >= quality_threshold`` only."""
    if not 0.0 <= quality_threshold <= 1.0:
        raise ValueError("quality_threshold must be within 0..1")
    facts = sorted(graph.validated_facts(quality_threshold), key=lambda f: (f["subject"], f["predicate"], f["object"]))
    records: list[dict[str, Any]] = []
    by_entity: dict[str, list[dict[str, Any]]] = {}
    names: dict[str, tuple[str, str]] = {}
    for f in facts:
        records.append(
            {
                "instruction": f"What is the relationship between {f['subject_name']} and {f['object_name']}?",
                "input": (
                    f"{f['subject_name']} ({label_words(str(f['subject_label']))}), "
                    f"{f['object_name']} ({label_words(str(f['object_label']))})"
                ),
                "output": sentence(f),
                "quality": round(float(f["quality"]), 4),
            }
        )
        for side in ("subject", "object"):
            by_entity.setdefault(f[side], []).append(f)
            names[f[side]] = (str(f[f"{side}_name"]), str(f[f"{side}_label"]))
    for key in sorted(by_entity):
        used = sorted(by_entity[key], key=lambda f: (-float(f["quality"]), f["subject"], f["predicate"], f["object"]))
        used = used[:MAX_SENTENCES]
        if len(used) < 2:
            continue
        name, label = names[key]
        quality = sum(float(f["quality"]) for f in used) / len(used)
        if quality < quality_threshold:
            continue
        records.append(
            {
                "instruction": f"{'Who' if label == 'PERSON' else 'What'} is {name}?",
                "input": f"{name} ({label_words(label)})",
                "output": " ".join(sentence(f) for f in used),
                "quality": round(quality, 4),
            }
        )
    return records


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    """Write one JSON object per line, atomically (a reader never sees half a file); return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
