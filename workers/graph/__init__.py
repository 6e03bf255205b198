"""The knowledge graph: one data model, two engines (LadybugDB embedded, Neo4j in production).

Data model::

    (:Entity {key, name, label, mentions, first_seen, last_seen})
    (:Conversation {id})-[:MENTIONS {count}]->(:Entity)
    (:Entity)-[:RELATED {predicate, confidence, support, validated, first_seen, last_seen,
                         conversations, event_ids}]->(:Entity)
    (:SourceEvent {id, written_at})          one node per conversation event ever written

Write contract (idempotent by source event id):

1. The caller (the conversation agent) asks ``known_events(ids)`` which of its
   events the graph already has, drops those extractions, folds the rest with
   ``GraphBatch.fold`` and calls ``write(batch)`` (``streams.conversations.write_new``).
2. ``write`` runs one transaction per batch. Inside it, it looks the batch's
   event ids up again: if all are known it writes nothing and returns ``[]``
   (a redelivered batch); if some are, it writes nothing and raises
   ``DuplicateEvents`` (another writer got there first: go back to step 1);
   otherwise it records every id as a ``SourceEvent`` in the same transaction
   as the counts. So an event is counted once or not at all, and a retry after
   a commit whose acknowledgement was lost is a harmless no-op.
3. Engine or driver errors are retried ``retries`` times with exponential
   backoff (``backoff_s``, doubling), each attempt in a fresh transaction, after
   which ``BackPressureError`` is raised: the caller pauses and does not commit
   its offsets. Nothing is ever dropped silently.

Counting rules: entity ``mentions`` and ``MENTIONS.count`` are summed,
``first_seen``/``last_seen`` are min/max (UTC). On ``RELATED``: ``confidence``
is the highest seen; ``conversations`` holds the distinct supporting
conversation ids (exact, so it grows with the number of conversations that
assert the fact) and ``support`` is its size; ``validated`` is recomputed on
every write of the edge as ``support >= min_support and confidence >=
min_confidence``; ``event_ids`` keeps only the newest 100 ids as provenance.

Both adapters open lazily on first use; ``close()`` releases the engine (and
LadybugDB's file lock) and a later call opens it again.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from learners.knowledge.model import GraphBatch
from schemas.envelope import as_utc
from schemas.errors import BackPressureError, ConfigError, DuplicateEvents, GraphError
from workers.graph.queries import (
    CREATE_EVENTS,
    KNOWN_EVENTS,
    MERGE_CONVERSATIONS,
    MERGE_ENTITIES,
    MERGE_MENTIONS,
    GraphReader,
)

__all__ = ["CypherGraph"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class CypherGraph(GraphReader, ABC):
    """What both adapters share: the idempotent write, bounded retries, the read side.

    An adapter supplies ``MERGE_RELATED``, ``_transaction`` (one engine
    transaction yielding a ``Run``), ``_reset`` (drop a broken connection) and
    ``ENGINE_ERRORS`` (what counts as an outage to retry).
    """

    MERGE_RELATED: ClassVar[str]

    def __init__(self, *, min_support: int, min_confidence: float, retries: int, backoff_s: float) -> None:
        if min_support < 1 or not 0.0 <= min_confidence <= 1.0 or retries < 0 or backoff_s < 0:
            raise ConfigError("graph: need min_support >= 1, 0 <= min_confidence <= 1, retries >= 0, backoff_s >= 0")
        self.min_support = min_support
        self.min_confidence = min_confidence
        self.retries = retries
        self.backoff_s = backoff_s

    @abstractmethod
    def close(self) -> None:
        """Release the engine; a later call opens it again."""

    def _time(self, dt: datetime) -> Any:
        """A datetime as the engine stores it (UTC)."""
        return as_utc(dt)

    # --- write side ----------------------------------------------------------------------

    def known_events(self, event_ids: Iterable[str]) -> set[str]:
        """Which of these event ids the graph already holds (retried like a write)."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return set()

        def lookup() -> set[str]:
            with self._transaction(write=False) as run:
                return {str(r["id"]) for r in run(KNOWN_EVENTS, {"ids": ids})}

        return self._retrying("event lookup", lookup)

    def write(self, batch: GraphBatch) -> list[str]:
        """Write one folded batch in one transaction; return its event ids, or ``[]`` if all were known."""
        return self.write_validated(batch)[0]

    def write_validated(self, batch: GraphBatch) -> tuple[list[str], set[tuple[str, str, str]]]:
        """:meth:`write`, plus which of the batch's (subject, predicate, object) facts are validated now.

        The upsert computes ``validated`` anyway, so the answer costs no second query.

        Raises ``DuplicateEvents`` if only some were known, ``BackPressureError``
        after ``retries`` failed attempts, ``ValueError`` for a batch that repeats
        an event id (folding a duplicate has already double-counted it).
        """
        ids = list(batch.event_ids)
        if not ids:
            return [], set()
        if len(set(ids)) != len(ids):
            raise ValueError("the batch repeats event ids: drop duplicate extractions before folding")
        t = self._time
        entities = [
            {"key": e.key, "name": e.name, "label": e.label, "mentions": e.mentions,
             "first_seen": t(e.first_seen), "last_seen": t(e.last_seen)}
            for e in batch.entities
        ]  # fmt: skip
        mentions = [{"conversation_id": m.conversation_id, "key": m.key, "count": m.count} for m in batch.mentions]
        relations = [
            {"subject": r.subject, "predicate": r.predicate, "object": r.object, "confidence": float(r.confidence),
             "conversations": list(dict.fromkeys(r.conversations)), "event_ids": list(r.event_ids),
             "first_seen": t(r.first_seen), "last_seen": t(r.last_seen)}
            for r in batch.relations
        ]  # fmt: skip
        conversations = list(dict.fromkeys(batch.conversations))

        def attempt() -> tuple[list[str], set[tuple[str, str, str]]]:
            with self._transaction(write=True) as run:
                known = {str(r["id"]) for r in run(KNOWN_EVENTS, {"ids": ids})}
                if known:
                    if known.issuperset(ids):
                        return [], set()
                    raise DuplicateEvents(frozenset(known))
                run(CREATE_EVENTS, {"ids": ids, "now": t(datetime.now(UTC))})
                if conversations:
                    run(MERGE_CONVERSATIONS, {"ids": conversations})
                if entities:
                    run(MERGE_ENTITIES, {"rows": entities})
                if mentions:
                    run(MERGE_MENTIONS, {"rows": mentions})
                validated: set[tuple[str, str, str]] = set()
                if relations:
                    params = {"rows": relations, "min_support": self.min_support,
                              "min_confidence": self.min_confidence}  # fmt: skip
                    merged = run(self.MERGE_RELATED, params)
                    if len(merged) != len(relations):
                        raise GraphError(
                            "a relation names an entity that is neither in the batch nor in the graph; "
                            "nothing was written"
                        )
                    validated = {(str(r["subject"]), str(r["predicate"]), str(r["object"])) for r in merged
                                 if r["validated"]}  # fmt: skip
                return ids, validated

        return self._retrying("write", attempt)

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return fn()
            except self.ENGINE_ERRORS as exc:
                last = exc
                log.warning("graph %s failed (attempt %d of %d): %s", what, attempt + 1, self.retries + 1, exc)
                self._reset(exc)
        raise BackPressureError(
            f"graph {what} failed {self.retries + 1} time(s), last: {type(last).__name__}: {last}; "
            "pause and retry the batch later (a retry never counts an event twice)"
        ) from last
