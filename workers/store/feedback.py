"""The feedback store: labelled samples in SQL, written in batches, read as training windows.

Writes are idempotent by ``event_id`` (``INSERT ... ON CONFLICT DO NOTHING``),
so a sink that replays a batch after a crash stores every event once. One
``add_many`` call is one transaction: all of it or none of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Insert, RowMapping, func, select
from sqlalchemy.dialects import postgresql, sqlite

from schemas.envelope import utc_now
from workers.store.engine import available, writer
from workers.store.models import FeedbackSample
from workers.store.samples import Sample, SampleIn

__all__ = ["FeedbackStore", "Sample", "SampleIn"]

BATCH_ROWS = 500  # rows per INSERT: 11 parameters each stays far below every engine's limit


def _insert_ignoring_duplicates(dialect: str) -> Insert:
    if dialect == "postgresql":
        return postgresql.insert(FeedbackSample).on_conflict_do_nothing(index_elements=["event_id"])
    if dialect == "sqlite":
        return sqlite.insert(FeedbackSample).on_conflict_do_nothing(index_elements=["event_id"])
    raise NotImplementedError(f"the feedback store supports sqlite and postgresql, not {dialect}")


def _row(s: SampleIn, stored_at: datetime) -> dict[str, Any]:
    return {
        "event_id": s.event_id,
        "learner": s.learner,
        "subject_id": s.subject_id,
        "text": s.text,
        "features": dict(s.features) if s.features is not None else None,
        "label": s.label,
        "weight": float(s.weight),
        "channel": s.channel,
        "source": s.source,
        "occurred_at": s.occurred_at,
        "stored_at": stored_at,
    }


def _sample(r: RowMapping) -> Sample:
    return Sample(**r)


class FeedbackStore:
    """Labelled feedback in SQL: ``add_many`` from the sink, ``window`` for the trainer.

    Engine outages raise ``StoreUnavailable``; the sink then pauses and
    retries the batch, which is safe because writes are idempotent.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self.clock = clock

    @contextmanager
    def _connection(self, what: str, *, write: bool = False) -> Iterator[Connection]:
        with available(what), (self._writer if write else self.engine).begin() as conn:
            yield conn

    def add_many(self, samples: Sequence[SampleIn]) -> int:
        """Store the samples whose event ids are new; return how many were.

        >>> from datetime import datetime, timezone
        >>> from workers.store.engine import make_engine
        >>> from workers.store.models import Base
        >>> engine = make_engine("sqlite://")
        >>> Base.metadata.create_all(engine)
        >>> store = FeedbackStore(engine)
        >>> s = SampleIn(event_id="e-1", learner="ctr", text="great", label=True, source="web",
        ...              occurred_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
        >>> store.add_many([s, s]), store.add_many([s]), store.count(["ctr"])
        (1, 0, 1)
        """
        unique = list({s.event_id: s for s in samples}.values())
        if not unique:
            return 0
        stored_at = self.clock()
        added = 0
        with self._connection("feedback write", write=True) as conn:
            # One cached statement with a parameter list: SQLAlchemy batches it ("insertmanyvalues")
            # without compiling a fresh 5,000-parameter VALUES clause per chunk. RETURNING, not
            # rowcount: drivers disagree on rowcount for batched inserts.
            stmt = _insert_ignoring_duplicates(conn.dialect.name).returning(FeedbackSample.event_id)
            for i in range(0, len(unique), BATCH_ROWS):
                rows = [_row(s, stored_at) for s in unique[i : i + BATCH_ROWS]]
                added += len(conn.execute(stmt, rows).all())
        return added

    def count(self, learners: Sequence[str] | None = None) -> int:
        """How many samples the store holds (for these learners, or all)."""
        q = select(func.count()).select_from(FeedbackSample)
        if learners is not None:
            q = q.where(FeedbackSample.learner.in_(list(learners)))
        with self._connection("feedback count") as conn:
            return int(conn.execute(q).scalar_one())

    def window(
        self,
        learners: Sequence[str],
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        last_n: int | None = None,
        limit: int = 100_000,
    ) -> list[Sample]:
        """The learners' samples with ``start <= occurred_at <= end``, oldest first.

        ``last_n`` keeps the newest ``n`` of them. At most ``limit`` samples come
        back, the newest ones when the window holds more.
        """
        if (last_n is not None and last_n < 1) or limit < 1:
            raise ValueError("last_n and limit must be at least 1")
        if not learners:
            return []
        n = min(last_n, limit) if last_n is not None else limit
        q = select(FeedbackSample.__table__).where(FeedbackSample.learner.in_(list(learners)))
        if start is not None:
            q = q.where(FeedbackSample.occurred_at >= start)
        if end is not None:
            q = q.where(FeedbackSample.occurred_at <= end)
        q = q.order_by(FeedbackSample.occurred_at.desc(), FeedbackSample.event_id.desc()).limit(n)
        with self._connection("feedback window") as conn:
            rows = conn.execute(q).mappings().all()
        return [_sample(r) for r in reversed(rows)]
