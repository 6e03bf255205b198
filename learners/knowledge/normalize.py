"""Entity normalisation: one canonical key per thing, whatever the surface text.

The key is ``f"{label}:{normalised}"`` where the normalised text has leading
determiners, possessives, edge punctuation and extra whitespace removed and is
casefolded; organisations also lose their legal suffix ("Acme Corp", "Acme
Inc." and "ACME" are one key). The alias map of the config is applied first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["EntityNormaliser", "clean_surface", "entity_key", "person_aliases"]

_LEADING = frozenset(
    ["the", "a", "an", "this", "that", "these", "those", "our", "my", "your", "their", "his", "her", "its"]
)
_ORG_SUFFIXES = frozenset(
    [
        *("corp", "corporation", "inc", "incorporated", "co", "company", "ltd", "limited"),
        *("llc", "llp", "plc", "gmbh", "ag", "sa", "bv", "nv", "pty"),
    ]
)
# Not "." at the front: ".NET" is a name. Not "+" or "#" anywhere: "C++", "C#".
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"  # straight, curly and angle quotes
_EDGE_LEAD = _QUOTES + "()[]{}<>,;:!?\u2026\u2013\u2014-*_/\\|~ \t\n"  # ... and ellipsis, en/em dash
_EDGE_TRAIL = _EDGE_LEAD + "."
_POSSESSIVES = ("'s", "\u2019s", "'", "\u2019")


def clean_surface(text: str) -> str:
    """The display form of a mention: no leading determiner, possessive or edge punctuation.

    >>> clean_surface("  the  Acme Corp's ")
    'Acme Corp'
    >>> clean_surface('"Zendesk",')
    'Zendesk'
    """
    words = text.split()
    while len(words) > 1 and words[0].casefold() in _LEADING:
        words = words[1:]
    out = " ".join(words).strip(_EDGE_TRAIL).lstrip(_EDGE_LEAD)
    for p in _POSSESSIVES:
        if out.endswith(p) and len(out) > len(p) and (p[-1] == "s" or out[-len(p) - 1] in "sS"):
            out = out[: -len(p)].rstrip(_EDGE_TRAIL)
            break
    return out or " ".join(text.split())


def _normalise(clean: str, label: str) -> str:
    norm = clean.casefold()
    if label == "ORG":
        words = norm.split()
        while len(words) > 1 and words[-1].strip(".,") in _ORG_SUFFIXES:
            words.pop()
            words[-1] = words[-1].rstrip(",&") or words[-1]
        if words and words[-1] == "&" and len(words) > 1:
            words.pop()
        norm = " ".join(words)
    return norm


def entity_key(label: str, normalised: str) -> str:
    """The graph identity of an entity.

    >>> entity_key("ORG", "acme")
    'ORG:acme'
    """
    return f"{label}:{normalised}"


class EntityNormaliser:
    """Maps a mention's surface text and label to ``(display name, normalised text)``.

    ``aliases`` maps an alias surface (matched casefolded) to its canonical surface.

    >>> n = EntityNormaliser({"k8s": "Kubernetes"})
    >>> n.canonical("K8s", "PRODUCT")
    ('Kubernetes', 'kubernetes')
    >>> n.canonical("Acme Corporation", "ORG"), n.canonical("ACME, Inc.", "ORG")
    (('Acme Corporation', 'acme'), ('ACME, Inc', 'acme'))
    """

    def __init__(self, aliases: Mapping[str, str] | None = None) -> None:
        self.aliases = dict(aliases or {})
        self._alias = {clean_surface(a).casefold(): clean_surface(c) for a, c in self.aliases.items()}
        # Surface texts repeat a lot in conversations; a bounded cache skips the string work.
        self._cache: dict[tuple[str, str], tuple[str, str]] = {}

    def canonical(self, text: str, label: str) -> tuple[str, str]:
        hit = self._cache.get((text, label))
        if hit is not None:
            return hit
        clean = clean_surface(text)
        clean = self._alias.get(clean.casefold(), clean)
        out = (clean, _normalise(clean, label))
        if len(self._cache) >= 100_000:
            self._cache.clear()
        self._cache[(text, label)] = out
        return out


def person_aliases(full_names: Iterable[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Single-name references that stand for one multi-word person name, when unambiguous.

    ``full_names`` are ``(normalised, display)`` pairs of multi-token PERSON mentions
    of one conversation; the result maps a first or last name to the full pair.
    A short name shared by two full names maps to neither.

    >>> a = person_aliases([("bob smith", "Bob Smith"), ("alice smith", "Alice Smith")])
    >>> sorted(a)
    ['alice', 'bob']
    >>> a["bob"]
    ('bob smith', 'Bob Smith')
    """
    found: dict[str, tuple[str, str] | None] = {}
    for norm, display in full_names:
        words = norm.split()
        if len(words) < 2:
            continue
        for short in {words[0], words[-1]}:
            prev = found.get(short, (norm, display))
            found[short] = (norm, display) if prev is not None and prev[0] == norm else None
    return {k: v for k, v in found.items() if v is not None}
