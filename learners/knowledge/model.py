"""The knowledge data model shared by extraction (pure) and the graph adapters.

Extraction turns one conversation turn into an :class:`Extraction`; a batch of
extractions is folded into a :class:`GraphBatch` — rows already aggregated per
key, because the embedded graph miscounts a key repeated inside one UNWIND
batch — which a ``GraphWriter`` writes in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Entity:
    """A normalised entity: ``key`` is ``label:normalised text`` and identifies it in the graph."""

    key: str
    name: str
    label: str


@dataclass(frozen=True, slots=True)
class Relation:
    """A directed fact between two entity keys, with the extractor's confidence (0..1)."""

    subject: str
    predicate: str
    object: str
    confidence: float
    pattern: str  # which rule produced it: svo, prep, appos, cooccurrence, ...


@dataclass(frozen=True, slots=True)
class Extraction:
    """What one conversation turn yielded, with its provenance."""

    event_id: str
    conversation_id: str
    occurred_at: datetime
    entities: tuple[Entity, ...] = ()
    mentions: tuple[tuple[str, int], ...] = ()  # (entity key, mentions in this turn)
    relations: tuple[Relation, ...] = ()


@dataclass
class EntityRow:
    key: str
    name: str
    label: str
    mentions: int
    first_seen: datetime
    last_seen: datetime


@dataclass
class MentionRow:
    conversation_id: str
    key: str
    count: int


@dataclass
class RelationRow:
    subject: str
    predicate: str
    object: str
    confidence: float  # the highest confidence seen in this batch
    conversations: list[str]  # distinct conversation ids that support it in this batch
    event_ids: list[str]  # provenance
    first_seen: datetime
    last_seen: datetime


@dataclass
class GraphBatch:
    """One write: every key appears once per row list."""

    event_ids: list[str] = field(default_factory=list)
    conversations: list[str] = field(default_factory=list)
    entities: list[EntityRow] = field(default_factory=list)
    mentions: list[MentionRow] = field(default_factory=list)
    relations: list[RelationRow] = field(default_factory=list)

    @classmethod
    def fold(cls, extractions: Iterable[Extraction]) -> GraphBatch:
        """Aggregate extractions per key (mentions summed, first/last seen merged).

        >>> from datetime import UTC, datetime
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> ada = Entity("PERSON:ada lovelace", "Ada Lovelace", "PERSON")
        >>> ex = [Extraction("e1", "c1", t, (ada,), (("PERSON:ada lovelace", 2),)),
        ...       Extraction("e2", "c2", t, (ada,), (("PERSON:ada lovelace", 1),))]
        >>> [(r.key, r.mentions) for r in GraphBatch.fold(ex).entities]
        [('PERSON:ada lovelace', 3)]
        """
        b = cls()
        ents: dict[str, EntityRow] = {}
        ments: dict[tuple[str, str], MentionRow] = {}
        rels: dict[tuple[str, str, str], RelationRow] = {}
        convs: dict[str, None] = {}
        for ex in extractions:
            b.event_ids.append(ex.event_id)
            convs[ex.conversation_id] = None
            names = {e.key: e for e in ex.entities}
            for key, n in ex.mentions:
                e = names[key]
                row = ents.get(key)
                if row is None:
                    ents[key] = EntityRow(key, e.name, e.label, n, ex.occurred_at, ex.occurred_at)
                else:
                    row.mentions += n
                    row.first_seen = min(row.first_seen, ex.occurred_at)
                    row.last_seen = max(row.last_seen, ex.occurred_at)
                m = ments.setdefault((ex.conversation_id, key), MentionRow(ex.conversation_id, key, 0))
                m.count += n
            for r in ex.relations:
                k = (r.subject, r.predicate, r.object)
                rr = rels.get(k)
                if rr is None:
                    rels[k] = RelationRow(
                        r.subject, r.predicate, r.object, r.confidence, [ex.conversation_id], [ex.event_id],
                        ex.occurred_at, ex.occurred_at,
                    )
                else:
                    rr.confidence = max(rr.confidence, r.confidence)
                    if ex.conversation_id not in rr.conversations:
                        rr.conversations.append(ex.conversation_id)
                    rr.event_ids.append(ex.event_id)
                    rr.first_seen = min(rr.first_seen, ex.occurred_at)
                    rr.last_seen = max(rr.last_seen, ex.occurred_at)
        b.conversations = list(convs)
        b.entities = list(ents.values())
        b.mentions = list(ments.values())
        b.relations = list(rels.values())
        return b
