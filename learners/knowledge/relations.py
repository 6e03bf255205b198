"""Relations between the entities of one parsed turn, read off the dependency tree.

Patterns, from strongest to weakest (confidence):

- ``appos`` 0.85: "Bob, the CTO of Acme" -> (Bob, role_at, Acme) with title "CTO";
  "Acme, a startup in Berlin" -> (Acme, located_in, Berlin); also the reverse
  "the CTO of Acme, Bob Smith" and the possessive "Acme's CTO, Bob".
- ``svo`` 0.8 (0.7 for a verb with no canonical predicate): subject entity - verb -
  object entity; the predicate is a canonical one ("employs" -> works_for, reversed)
  or the verb lemma. A passive with an agent ("was acquired by Globex") is turned active.
- ``copula`` 0.8: "Bob is the CEO of Acme" -> role_at, "Acme is a company in Berlin" -> located_in.
- ``prep`` 0.7 (0.6 generic): subject entity - verb - preposition - entity: a canonical
  predicate ("works at" -> works_for, "is based in" -> located_in) or ``{lemma}_{prep}``.
- ``site`` 0.7: "Acme's Paris office" -> (Acme, located_in, Paris).
- ``nmod`` 0.6: entity - preposition - entity ("Alice from Globex" -> works_for).
- ``cooccurrence`` 0.3: two entities in one sentence with none of the above -> related_to.

A part standing in for its entity as the subject ("the Berlin team at Acme uses
Jira") caps the confidence at 0.6. A negated verb ("Bob no longer works at Acme"),
a question, or a plan ("Lena wants to move to Adyen") asserts no fact; its
entities still get the co-occurrence edge, since they were mentioned together.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import NamedTuple

from spacy.tokens import Doc, Token

__all__ = ["RELATED_TO", "Candidate", "Mention", "relations_in"]

RELATED_TO = "related_to"

CONF_APPOS = 0.85
CONF_SVO = 0.8
CONF_COPULA = 0.8
CONF_PREP = 0.7
CONF_SITE = 0.7
CONF_SVO_GENERIC = 0.7  # a verb with no canonical predicate says less about the relation
CONF_PREP_GENERIC = 0.6
CONF_NMOD = 0.6
CONF_PART = 0.6  # ceiling when a part ("the Berlin team at Acme") stands in for the entity
CONF_COOCCURRENCE = 0.3

# A sentence naming more distinct entities than this is a list, not a statement:
# pairing all of them would add n^2 meaningless edges (and cost n^2 time).
MAX_COOCCURRING = 8

# verb lemma -> (predicate, subject and object swapped)
_VERBS: dict[str, tuple[str, bool]] = {
    "work": ("works_for", False),
    "employ": ("works_for", True),
    "hire": ("works_for", True),
    "join": ("works_for", False),
    "found": ("founded", False),
    "co-found": ("founded", False),
    "cofound": ("founded", False),
    "start": ("founded", False),
    "acquire": ("acquired", False),
    "buy": ("acquired", False),
    "purchase": ("acquired", False),
    "use": ("uses", False),
    "utilize": ("uses", False),
    "utilise": ("uses", False),
    "adopt": ("uses", False),
    "locate": ("located_in", False),
    "base": ("located_in", False),
    "headquarter": ("located_in", False),
    "lead": ("manages", False),
    "manage": ("manages", False),
    "head": ("manages", False),
    "own": ("owns", False),
    "replace": ("replaced", False),
    "leave": ("left", False),
}
# (verb lemma, preposition) -> predicate; anything else becomes f"{lemma}_{prep}".
_VERB_PREPS: dict[tuple[str, str], str] = {
    ("work", "at"): "works_for",
    ("work", "for"): "works_for",
    ("join", "as"): "works_for",
    ("live", "in"): "lives_in",
    ("bear", "in"): "born_in",
    ("base", "in"): "located_in",
    ("base", "out"): "located_in",
    ("locate", "in"): "located_in",
    ("headquarter", "in"): "located_in",
    ("be", "in"): "located_in",
    ("integrate", "with"): "integrates_with",
    ("partner", "with"): "partners_with",
    ("move", "to"): "migrated_to",
    ("migrate", "to"): "migrated_to",
    ("switch", "to"): "migrated_to",
    ("run", "on"): "runs_on",
    ("report", "to"): "reports_to",
}
# Preposition after a title noun or an entity -> predicate.
_PLACE_PREPS = frozenset({"in", "near", "outside", "from"})
_ROLE_PREPS = frozenset({"of", "at", "for", "with", "from"})
_FOUNDER_NOUNS = frozenset({"founder", "co-founder", "cofounder"})
_PLACES = frozenset({"GPE", "LOC"})
# Parts of an organisation or a system that stand for it as a subject.
_PART_NOUNS = frozenset(
    [
        *("team", "office", "department", "division", "group", "staff", "branch", "subsidiary", "unit", "site"),
        *("engineer", "developer", "employee", "pipeline", "service", "cluster", "platform", "app", "stack", "system"),
    ]
)
_SITE_NOUNS = frozenset(["office", "headquarters", "hq", "branch", "campus", "site", "warehouse", "datacenter"])
_SUBJ = frozenset({"nsubj", "nsubjpass"})
_OBJ = frozenset({"dobj", "attr", "oprd", "dative"})
_NOUNS = frozenset({"NOUN", "PROPN"})
_VERB_LIKE = frozenset({"VERB", "AUX"})
_INHERIT = frozenset({"conj", "xcomp"})
_INTENT_VERBS = frozenset(["want", "plan", "need", "hope", "intend", "wish", "consider", "try", "expect", "like"])


class Mention(NamedTuple):
    """An entity occurrence: token span ``[start, end)`` of the doc and its resolved key."""

    start: int
    end: int
    key: str
    label: str


class Candidate(NamedTuple):
    """A relation before validation; ``title`` is the role noun of appositive/copular patterns."""

    subject: str
    predicate: str
    object: str
    confidence: float
    pattern: str
    title: str = ""


def _snake(text: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in text.casefold()).strip("_")
    return out or "rel"


def _anchor(tok: Token) -> Token:
    """The first conjunct: "Alice and Bob work" gives Bob the grammatical role of Alice."""
    for _ in range(8):
        if tok.dep_ != "conj" or tok.head.pos_ not in _NOUNS:
            break
        tok = tok.head
    return tok


def _negated(verb: Token) -> bool:
    return any(c.dep_ == "neg" for c in verb.children)


def _is_question(doc: Doc, start: int, end: int) -> bool:
    for i in range(end - 1, start - 1, -1):
        if not doc[i].is_space:
            return doc[i].text == "?"
    return False


def _title(noun: Token) -> str:
    parts = [c.text for c in noun.lefts if c.dep_ in ("compound", "amod") and c.pos_ in _NOUNS]
    return " ".join([*parts, noun.text])


class _Subject(NamedTuple):
    mention: Mention
    passive: bool
    cap: float  # ceiling on the confidence: lower when the subject stands in for its entity


def _entity_part(sent: _Sentence, noun: Token) -> Mention | None:
    """The entity a part stands for: "the Berlin team at Acme", "Acme's office", "the Orca pipeline"."""
    if noun.lemma_.casefold() not in _PART_NOUNS:
        return None
    compound = None
    for c in noun.children:
        dep = c.dep_
        if dep == "poss":
            m = sent.mention_of(c)
            if m is not None:
                return m
        elif dep == "prep" and c.text.casefold() in ("at", "of", "from"):
            for g in c.children:
                m = sent.mention_of(g) if g.dep_ == "pobj" else None
                if m is not None:
                    return m
        elif dep == "compound" and compound is None:
            m = sent.mention_of(c)
            if m is not None and m.label not in _PLACES:
                compound = m
    return compound


class _Sentence:
    """Role lookups over the mentions of one sentence, by the index of each mention's root token."""

    def __init__(self, root_at: dict[int, Mention]) -> None:
        self.root_at = root_at

    def mention_of(self, tok: Token) -> Mention | None:
        return self.root_at.get(tok.i)

    def appositive(self, noun: Token) -> Mention | None:
        for c in noun.children:
            if c.dep_ == "appos" and c.i in self.root_at:
                return self.root_at[c.i]
        return None

    def subjects(self, verb: Token, depth: int = 0) -> list[_Subject]:
        """Entity subjects of ``verb``, inherited along conj/xcomp chains ("joined Acme and works ...")."""
        own = [c for c in verb.children if c.dep_ in _SUBJ]
        if not own:
            head = verb.head
            if verb.dep_ == "xcomp" and head.lemma_.casefold() in _INTENT_VERBS:
                return []  # "Lena wants to move to Adyen" is a plan, not a fact
            if depth < 3 and verb.dep_ in _INHERIT and head.pos_ in _VERB_LIKE and head.i != verb.i:
                return self.subjects(verb.head, depth + 1)
            return []
        out = []
        for c in own:
            passive = c.dep_ == "nsubjpass"
            for t in (c, *c.conjuncts):  # "Alice and Bob work at Acme"
                m = self.root_at.get(t.i)
                if m is not None:
                    out.append(_Subject(m, passive, 1.0))
                elif t.pos_ in _NOUNS:
                    named = self.appositive(t)  # "The CEO of Globex, Hank Scorpio, lives in ..."
                    if named is not None:
                        out.append(_Subject(named, passive, 1.0))
                        continue
                    m = _entity_part(self, t)
                    if m is not None:
                        out.append(_Subject(m, passive, CONF_PART))
        return out


def _title_links(sent: _Sentence, noun: Token) -> list[tuple[Mention, str, float]]:
    """Who holds the title ``noun``: an appositive or a copular subject (mention, pattern, confidence)."""
    out: list[tuple[Mention, str, float]] = []
    head_m = sent.mention_of(noun.head)
    if noun.dep_ == "appos" and head_m is not None:
        out.append((head_m, "appos", CONF_APPOS))
    elif noun.dep_ == "attr" and noun.head.lemma_ == "be" and not _negated(noun.head):
        out.extend((s.mention, "copula", min(CONF_COPULA, s.cap)) for s in sent.subjects(noun.head))
    named = sent.appositive(noun)
    if named is not None:
        out.append((named, "appos", CONF_APPOS))
    return out


def _verb_predicate(lemma: str) -> tuple[str, bool, float]:
    """(predicate, subject and object swapped, confidence) of a subject-verb-object triple."""
    hit = _VERBS.get(lemma)
    return (hit[0], hit[1], CONF_SVO) if hit else (_snake(lemma), False, CONF_SVO_GENERIC)


def _object_relations(sent: _Sentence, m: Mention, root: Token) -> list[Candidate]:
    """Relations in which mention ``m`` (root token ``root``) is the object."""
    out: list[Candidate] = []
    a = _anchor(root)
    dep = a.dep_
    head = a.head
    if dep in _OBJ and head.pos_ in _VERB_LIKE and not _negated(head):
        lemma = head.lemma_.casefold()
        if lemma != "be":
            pred, rev, conf = _verb_predicate(lemma)
            for s in sent.subjects(head):
                subj, obj = (m, s.mention) if rev != s.passive else (s.mention, m)
                out.append(Candidate(subj.key, pred, obj.key, min(conf, s.cap), "svo"))
        return out
    prep_word = ""
    noun: Token | None = None
    if dep == "poss" and head.pos_ in _NOUNS:
        noun = head
    elif dep == "compound" and m.label in _PLACES and head.lemma_.casefold() in _SITE_NOUNS:
        owner = _entity_part(sent, head)  # "Acme's Paris office", "the Paris office of Acme"
        if owner is not None and owner.key != m.key:
            out.append(Candidate(owner.key, "located_in", m.key, CONF_SITE, "site"))
    elif dep == "pobj" and head.dep_ in ("prep", "agent"):
        prep_word = head.text.casefold()
        gov = head.head
        if head.dep_ == "agent" and gov.pos_ in _VERB_LIKE and not _negated(gov):
            pred, rev, conf = _verb_predicate(gov.lemma_.casefold())
            for s in sent.subjects(gov):
                subj, obj = (s.mention, m) if rev else (m, s.mention)
                out.append(Candidate(subj.key, pred, obj.key, min(conf, s.cap), "svo"))
            return out
        if gov.dep_ == "prep" and gov.head.pos_ in _VERB_LIKE:  # "based out of Berlin"
            prep_word, gov = gov.text.casefold(), gov.head
        if gov.pos_ in _VERB_LIKE and not _negated(gov):
            lemma = gov.lemma_.casefold()
            mapped = _VERB_PREPS.get((lemma, prep_word))
            pred = mapped or f"{_snake(lemma)}_{_snake(prep_word)}"
            conf = CONF_PREP if mapped else CONF_PREP_GENERIC
            if gov.dep_ == "acl" and gov.head.pos_ in _NOUNS:  # "a startup based in Berlin"
                noun = gov.head
                prep_word = "in" if pred == "located_in" else prep_word
            for s in sent.subjects(gov):
                out.append(Candidate(s.mention.key, pred, m.key, min(conf, s.cap), "prep"))
        elif gov.pos_ in _NOUNS:
            owner = sent.mention_of(gov)
            if owner is not None and owner.key != m.key:
                if prep_word in _PLACE_PREPS and m.label in _PLACES:
                    out.append(Candidate(owner.key, "located_in", m.key, CONF_NMOD, "nmod"))
                elif prep_word in _ROLE_PREPS:
                    out.append(Candidate(owner.key, "works_for", m.key, CONF_NMOD, "nmod"))
            elif owner is None:
                noun = gov
    if noun is not None and sent.mention_of(noun) is None:
        founder = noun.lemma_.casefold() in _FOUNDER_NOUNS
        if prep_word in _PLACE_PREPS and (m.label in _PLACES or prep_word != "from"):
            pred, title = "located_in", ""
        elif prep_word in _ROLE_PREPS or not prep_word:
            pred, title = ("founded" if founder else "role_at"), _title(noun)
        else:
            return out
        links = _title_links(sent, noun)
        # "head of data engineering at Acme": the organisation hangs off the department.
        while not links and noun.dep_ == "pobj" and noun.head.dep_ == "prep" and noun.head.head.pos_ in _NOUNS:
            dept, noun = noun, noun.head.head
            if sent.mention_of(noun) is not None or noun.i == dept.i:
                break
            title = f"{_title(noun)} {noun.doc[noun.i + 1 : dept.i + 1].text}" if pred != "located_in" else ""
            links = _title_links(sent, noun)
        for holder, pattern, conf in links:
            out.append(Candidate(holder.key, pred, m.key, conf, pattern, title))
    return out


def relations_in(doc: Doc, mentions: Sequence[Mention]) -> list[Candidate]:
    """Candidate relations between the ``mentions`` of a parsed ``doc``, sentence by sentence.

    >>> from spacy.tokens import Doc
    >>> from spacy.vocab import Vocab
    >>> words = ["Bob", ",", "the", "CTO", "of", "Acme", ",", "lives", "in", "Berlin"]
    >>> doc = Doc(Vocab(), words=words, heads=[7, 0, 3, 0, 3, 4, 0, 7, 7, 8],
    ...           deps=["nsubj", "punct", "det", "appos", "prep", "pobj", "punct", "ROOT", "prep", "pobj"],
    ...           pos=["PROPN", "PUNCT", "DET", "NOUN", "ADP", "PROPN", "PUNCT", "VERB", "ADP", "PROPN"],
    ...           lemmas=["Bob", ",", "the", "CTO", "of", "Acme", ",", "live", "in", "Berlin"])
    >>> ms = [Mention(0, 1, "PERSON:bob", "PERSON"), Mention(5, 6, "ORG:acme", "ORG"),
    ...       Mention(9, 10, "GPE:berlin", "GPE")]
    >>> [(c.subject, c.predicate, c.object, c.title) for c in relations_in(doc, ms) if c.pattern != "cooccurrence"]
    [('PERSON:bob', 'role_at', 'ORG:acme', 'CTO'), ('PERSON:bob', 'lives_in', 'GPE:berlin', '')]
    """
    if len({m.key for m in mentions}) < 2:
        return []
    bounds = [(sent.start, sent.end) for sent in doc.sents]
    starts = [b[0] for b in bounds]
    by_sent: dict[int, list[Mention]] = {}
    for m in mentions:
        by_sent.setdefault(bisect_right(starts, m.start) - 1, []).append(m)
    out: list[Candidate] = []
    for index, group in by_sent.items():
        keys = list(dict.fromkeys(m.key for m in group))
        if len(keys) < 2:
            continue
        linked: set[frozenset[str]] = set()
        # A question asserts nothing ("Does Orca integrate with Terraform?"): co-occurrence only.
        if not _is_question(doc, *bounds[index]):
            roots = [(m, doc[m.start : m.end].root) for m in group]
            sent = _Sentence({root.i: m for m, root in roots})
            for m, root in roots:
                for c in _object_relations(sent, m, root):
                    if c.subject != c.object:
                        out.append(c)
                        linked.add(frozenset((c.subject, c.object)))
        if len(keys) <= MAX_COOCCURRING:
            for i, a in enumerate(keys):
                for b in keys[i + 1 :]:
                    if frozenset((a, b)) not in linked:
                        out.append(Candidate(a, RELATED_TO, b, CONF_COOCCURRENCE, "cooccurrence"))
    return out
