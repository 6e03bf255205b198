"""The feedback store and its migrations on real engines: SQLite (a file) and PostgreSQL.

The databases come from the fixtures in ``tests/integration/conftest.py`` (PostgreSQL cases skip,
saying why, without a reachable server).
"""

from __future__ import annotations

import doctest
import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from workers.store import feedback, migrate
from workers.store.engine import make_engine
from workers.store.feedback import FeedbackStore
from workers.store.migrate import current_revision, head_revision, upgrade
from workers.store.models import Base
from workers.store.samples import FeatureValue, LabelValue, SampleIn

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(engine: Engine) -> FeedbackStore:
    return FeedbackStore(engine)


def sample(
    i: int,
    *,
    learner: str = "sentiment",
    label: LabelValue = True,
    minutes: int | None = None,
    text: str | None = None,
    features: dict[str, FeatureValue] | None = None,
) -> SampleIn:
    return SampleIn(
        event_id=f"00000000-0000-4000-8000-{i:012d}",
        learner=learner,
        label=label,
        occurred_at=T0 + timedelta(minutes=i if minutes is None else minutes),
        source="test",
        text=text if text is not None or features is not None else f"text {i}",
        features=features,
    )


# -- migrations -----------------------------------------------------------------------


def test_migrations_reach_head_and_rerun_as_a_no_op(db_url: str) -> None:
    assert current_revision(db_url) == head_revision() == "0003"
    upgrade(db_url)
    assert current_revision(db_url) == "0003"


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_processes_starting_together_migrate_once(blank_url: str) -> None:
    assert current_revision(blank_url) is None
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait()
            upgrade(blank_url)
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert current_revision(blank_url) == "0003"


def test_the_operator_command(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = f"sqlite:///{tmp_path}/cli/fresh.db"
    assert migrate.main(["current", "--url", fresh]) == 0
    assert capsys.readouterr().out.strip() == "none (never migrated)"
    assert migrate.main(["upgrade", "--url", fresh]) == 0
    assert "at revision 0003 (head 0003)" in capsys.readouterr().out
    assert migrate.main(["current", "--url", db_url]) == 0
    assert capsys.readouterr().out.strip() == "0003"
    assert migrate.main(["current", "--url", "mysql://x/y"]) == 2
    assert capsys.readouterr().err.startswith("error: --url: must be a sqlite://")


# -- writes ---------------------------------------------------------------------------


def test_add_many_is_idempotent_by_event_id(store: FeedbackStore) -> None:
    batch = [sample(i) for i in range(1200)]  # more than one INSERT statement
    assert store.add_many(batch) == 1200
    assert store.add_many(batch) == 0
    assert store.count() == 1200
    overlap = [*batch[-5:], *(sample(2000 + i) for i in range(7))]
    assert store.add_many(overlap) == 7
    assert store.add_many([sample(3000), sample(3000)]) == 1  # a duplicate inside one batch counts once
    assert store.count() == 1208
    assert store.add_many([]) == 0


def test_values_round_trip(store: FeedbackStore) -> None:
    tokyo = timezone(timedelta(hours=9))
    rows = [
        SampleIn(event_id="a", learner="l", label=True, occurred_at=datetime(2026, 1, 1, 21, tzinfo=tokyo),
                 source="web", subject_id="u-1", text="hello", weight=0.25, channel="implicit"),
        SampleIn(event_id="b", learner="l", label=3, occurred_at=T0 + timedelta(hours=1), source="web",
                 features={"price": 9.5, "n": 2, "mobile": False, "country": "fr"}),
        SampleIn(event_id="c", learner="l", label=0.5, occurred_at=T0 + timedelta(hours=2), source="web", text=""),
        SampleIn(event_id="d", learner="l", label="pos", occurred_at=T0 + timedelta(hours=3), source="web", text="x"),
    ]  # fmt: skip
    store.add_many(rows)
    got = store.window(["l"])
    assert [s.event_id for s in got] == ["a", "b", "c", "d"]
    a, b, c, _ = got
    assert a.occurred_at == T0 and a.occurred_at.tzinfo is UTC and a.stored_at.tzinfo is UTC
    assert (a.subject_id, a.text, a.features, a.weight, a.channel) == ("u-1", "hello", None, 0.25, "implicit")
    assert b.text is None and b.features == {"price": 9.5, "n": 2, "mobile": False, "country": "fr"}
    labels = [s.label for s in got]
    assert labels == [True, 3, 0.5, "pos"]
    assert [type(y) for y in labels] == [bool, int, float, str]  # JSON keeps the label's type
    assert c.text == ""


def test_sqlite_rows_are_written_as_sqlalchemys_column_types_write_them(tmp_path: Path) -> None:
    # add_many encodes rows itself (no per-value SQLAlchemy processing): times must be the same text,
    # or range filters would compare them wrongly with rows written by other code paths.
    url = f"sqlite:///{tmp_path}/store.db"
    upgrade(url)
    engine = make_engine(url)
    try:
        FeedbackStore(engine, clock=lambda: T0 + timedelta(microseconds=7)).add_many([
            SampleIn(event_id="a", learner="l", label=False, source="web", features={"x": 1.5, "tag": "é"},
                     occurred_at=datetime(2026, 1, 1, 21, 30, tzinfo=timezone(timedelta(hours=9)))),
        ])
        with engine.connect() as conn:
            raw = conn.exec_driver_sql("SELECT occurred_at, stored_at, label, features FROM feedback_samples").one()
        table = Base.metadata.tables["feedback_samples"]
        as_sqlalchemy_writes = [
            table.c[name].type.dialect_impl(engine.dialect).bind_processor(engine.dialect)(value)  # type: ignore[misc]
            for name, value in [("occurred_at", datetime(2026, 1, 1, 12, 30, tzinfo=UTC)),
                                ("stored_at", T0 + timedelta(microseconds=7))]
        ]  # fmt: skip
        assert list(raw[:2]) == as_sqlalchemy_writes == ["2026-01-01 12:30:00.000000", "2026-01-01 12:00:00.000007"]
        assert json.loads(raw[2]) is False and json.loads(raw[3]) == {"x": 1.5, "tag": "é"}
    finally:
        engine.dispose()


# -- windows --------------------------------------------------------------------------


@pytest.fixture
def filled(store: FeedbackStore) -> FeedbackStore:
    # 0..9 for "a" at minutes 0..9, 100..104 for "b" at minutes 0..4; inserted newest first
    rows = [sample(i, learner="a") for i in range(10)] + [sample(100 + i, learner="b", minutes=i) for i in range(5)]
    store.add_many(list(reversed(rows)))
    return store


def ids(samples: Sequence[SampleIn]) -> list[int]:
    return [int(s.event_id.rsplit("-", 1)[1]) for s in samples]


def test_window_by_learner_ordered_by_time(filled: FeedbackStore) -> None:
    assert ids(filled.window(["a"])) == list(range(10))
    assert ids(filled.window(["b"])) == [100, 101, 102, 103, 104]
    both = filled.window(["a", "b"])
    assert len(both) == 15 and [s.occurred_at for s in both] == sorted(s.occurred_at for s in both)
    assert filled.window(["nobody"]) == [] and filled.window([]) == []
    assert (filled.count(["a"]), filled.count(["b", "a"]), filled.count()) == (10, 15, 15)


def test_window_bounds_are_inclusive(filled: FeedbackStore) -> None:
    def at(m: int) -> datetime:
        return T0 + timedelta(minutes=m)

    assert ids(filled.window(["a"], start=at(3), end=at(6))) == [3, 4, 5, 6]
    assert ids(filled.window(["a"], start=at(8))) == [8, 9]
    assert ids(filled.window(["a"], end=at(1))) == [0, 1]
    shifted = (T0 + timedelta(minutes=3)).astimezone(timezone(timedelta(hours=-5)))
    assert ids(filled.window(["a"], start=shifted, end=shifted)) == [3]  # bounds in any zone


def test_last_n_is_the_newest_returned_oldest_first(filled: FeedbackStore) -> None:
    assert ids(filled.window(["a"], last_n=3)) == [7, 8, 9]
    assert ids(filled.window(["a"], end=T0 + timedelta(minutes=5), last_n=2)) == [4, 5]
    assert ids(filled.window(["a"], last_n=50)) == list(range(10))
    assert ids(filled.window(["a"], limit=4)) == [6, 7, 8, 9]  # over the limit: the newest
    assert ids(filled.window(["a"], last_n=6, limit=2)) == [8, 9]
    with pytest.raises(ValueError):
        filled.window(["a"], last_n=0)


def test_ties_in_time_order_by_event_id(store: FeedbackStore) -> None:
    store.add_many([sample(i, minutes=0) for i in (5, 3, 9, 1)])
    assert ids(store.window(["sentiment"])) == [1, 3, 5, 9]
    assert ids(store.window(["sentiment"], last_n=2)) == [5, 9]


def test_two_stores_writing_the_same_events_store_them_once(db_url: str) -> None:
    engines = [make_engine(db_url), make_engine(db_url)]
    try:
        a, b = (FeedbackStore(e) for e in engines)
        batch = [sample(i) for i in range(50)]
        assert a.add_many(batch[:30]) + b.add_many(batch[20:]) == 50
        assert a.count() == b.count() == 50
    finally:
        for e in engines:
            e.dispose()


def test_doctests() -> None:
    assert doctest.testmod(feedback).failed == 0


def test_a_sample_like_value_without_input_is_refused(store: FeedbackStore) -> None:
    # The feedback loop hands its LearnedSample objects over as they are (no SampleIn copy).
    from streams.feedback import LearnedSample

    def learned(event_id: str, **kw: object) -> LearnedSample:
        base: dict[str, object] = {"event_id": event_id, "learner": "l", "subject_id": None, "text": None,
                                   "features": None, "label": True, "weight": 1.0, "channel": "explicit",
                                   "source": "web", "occurred_at": T0}
        return LearnedSample(**{**base, **kw})  # type: ignore[arg-type]

    assert store.add_many([learned("x", features={"a": 1.0}), learned("y", text="hi")]) == 2
    with pytest.raises(ValueError, match="sample z: needs text or features"):
        store.add_many([learned("z")])
    assert store.count(["l"]) == 2  # the refused batch wrote nothing
