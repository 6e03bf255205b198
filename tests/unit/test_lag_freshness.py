"""Model freshness from a learner's status and the newest event produced on its partition."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta
from typing import Any

import workers.lag.freshness
from workers.lag.freshness import event_time, learner_freshness, parse_time

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def status(**kw: Any) -> dict[str, Any]:
    return {"name": "sea", "topic": "p.feedback", "partition": 1, "offset": 99,
            "last_event_at": T0.isoformat(), **kw}


def test_doctests() -> None:
    assert doctest.testmod(workers.lag.freshness).failed == 0


def test_caught_up_is_zero_even_if_the_last_event_is_old() -> None:
    f = learner_freshness(status(), log_end=100, newest_event_at=T0 + timedelta(hours=5), bound_s=60)
    assert (f.behind, f.freshness_s, f.stale) == (0, 0.0, False)


def test_behind_is_the_gap_in_event_time() -> None:
    f = learner_freshness(status(), log_end=130, newest_event_at=T0 + timedelta(seconds=42.5), bound_s=60)
    assert (f.behind, f.freshness_s, f.stale) == (30, 42.5, False)
    assert f.partition == 1 and f.topic == "p.feedback" and f.learner == "sea"


def test_over_the_bound_is_stale() -> None:
    f = learner_freshness(status(), log_end=101, newest_event_at=T0 + timedelta(seconds=61), bound_s=60)
    assert f.stale


def test_newest_event_older_than_the_learned_one_is_zero() -> None:
    # Events arrive out of event-time order: the model already knows a later one.
    f = learner_freshness(status(), log_end=101, newest_event_at=T0 - timedelta(seconds=5), bound_s=60)
    assert f.freshness_s == 0.0


def test_unknown_without_times() -> None:
    assert learner_freshness(status(last_event_at=None), log_end=150, newest_event_at=T0, bound_s=1).freshness_s is None
    assert learner_freshness(status(), log_end=150, newest_event_at=None, bound_s=1).freshness_s is None
    f = learner_freshness(status(), log_end=None, newest_event_at=None, bound_s=1)
    assert f.behind is None and f.freshness_s is None and not f.stale


def test_odd_status_fields_do_not_break_it() -> None:
    f = learner_freshness({"name": "x", "partition": True, "offset": "7"}, log_end=10, newest_event_at=T0, bound_s=1)
    assert f.partition is None and f.topic is None and f.behind is None


def test_as_json() -> None:
    f = learner_freshness(status(), log_end=101, newest_event_at=T0 + timedelta(seconds=2), bound_s=60)
    assert f.as_json() == {
        "learner": "sea", "topic": "p.feedback", "partition": 1,
        "last_event_at": "2026-03-01T12:00:00+00:00", "newest_event_at": "2026-03-01T12:00:02+00:00",
        "behind": 1, "freshness_s": 2.0, "stale": False,
    }


def test_parse_time_forms() -> None:
    assert parse_time("2026-03-01T12:00:00+00:00") == T0
    assert parse_time("2026-03-01T12:00:00") == T0  # naive means UTC
    assert parse_time(T0.timestamp()) == T0
    assert parse_time(None) is None and parse_time(True) is None and parse_time("soon") is None


def test_event_time_prefers_the_envelope() -> None:
    body = b'{"schema": "feedback/1", "occurred_at": "2026-03-01T13:00:00+01:00"}'
    assert event_time(body, 5) == T0
    assert event_time(b'{"occurred_at": 7}', 0) == datetime.fromtimestamp(7, tz=UTC)
    assert event_time(b"[1, 2]", 2_000) == datetime.fromtimestamp(2, tz=UTC)
    assert event_time(b"\xff\xfe", None) is None
    assert event_time(None, -1) is None
