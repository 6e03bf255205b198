"""Retrain gating: a drift, a schedule or a volume asks for a retrain only when the learner's policy allows it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from learners.config import LearnersConfig
from learners.retrain_policy import RetrainGate, RetrainPolicySpec, cron_matches
from schemas import DriftEvent, RetrainRequest
from schemas.errors import ConfigError
from tests.unit.test_feedback_processor import TOPIC, records, rig, sea_events


@pytest.mark.parametrize(
    ("expr", "at", "expected"),
    [
        ("* * * * *", datetime(2026, 3, 1, 0, 0), True),
        ("30 2 * * *", datetime(2026, 3, 1, 2, 30), True),
        ("30 2 * * *", datetime(2026, 3, 1, 2, 31), False),
        ("*/20 8-17 * * 1-5", datetime(2026, 3, 2, 9, 40), True),  # a Monday
        ("*/20 8-17 * * 1-5", datetime(2026, 3, 1, 9, 40), False),  # a Sunday
        ("0 0 1,15 * *", datetime(2026, 3, 15, 0, 0), True),
        ("0 0 13 * 5", datetime(2026, 3, 6, 0, 0), True),  # restricted day and weekday: either matches
        ("0 0 * 2 *", datetime(2026, 3, 6, 0, 0), False),
    ],
)
def test_cron_matches_minutes_as_cron_does(expr: str, at: datetime, expected: bool) -> None:
    assert cron_matches(expr, at.replace(tzinfo=UTC)) is expected


@pytest.mark.parametrize("expr", ["* * * *", "61 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"])
def test_a_bad_schedule_is_one_config_line(expr: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LearnersConfig.from_mapping({"learners": {"sea": {"retrain_policy": {"schedule": expr}}}}, source="l.toml")
    message = str(caught.value)
    assert message.startswith("l.toml: learners.sea.retrain_policy.schedule") and "\n" not in message


def test_default_policy_lets_error_drift_ask_and_holds_the_other_kinds_back() -> None:
    gate = RetrainGate(RetrainPolicySpec())
    assert [gate.on_drift(kind, n_seen=10, now=0.0) for kind in ("input", "prediction", "estimated_performance")] == [
        None,
        None,
        None,
    ]
    assert gate.on_drift("error", n_seen=10, now=0.0) == "drift"
    assert gate.gated == {
        "reason_not_allowed:input": 1,
        "reason_not_allowed:prediction": 1,
        "reason_not_allowed:estimated_performance": 1,
    }


def test_cooldown_and_min_new_labels_count_what_they_hold_back() -> None:
    gate = RetrainGate(RetrainPolicySpec(min_new_labels=10, cooldown=100))
    gate.labelled(5)
    assert gate.on_drift("error", n_seen=5, now=0) is None  # 5 labels < 10
    gate.labelled(5)
    assert gate.on_drift("error", n_seen=10, now=1) == "drift"
    gate.labelled(50)
    assert gate.on_drift("error", n_seen=60, now=50) is None  # 49 s after the last request
    assert gate.on_drift("error", n_seen=60, now=101) == "drift"
    assert gate.gated == {"min_new_labels": 1, "cooldown": 1}
    assert gate.status()["requested"] == {"drift": 2}


def test_hysteresis_waits_for_the_drift_to_stand_events_and_seconds() -> None:
    gate = RetrainGate(RetrainPolicySpec(persist_events=100, persist_seconds=30))
    assert gate.on_drift("error", n_seen=1000, now=0) is None
    assert gate.due(n_seen=1099, now=60) is None  # not yet 100 events
    assert gate.due(n_seen=1100, now=29) is None  # not yet 30 s
    assert gate.due(n_seen=1100, now=30) == "drift"
    assert gate.due(n_seen=1200, now=90) is None  # released once
    assert gate.status()["drift_persisting"] is False


def test_volume_asks_once_per_volume_of_labels_and_schedule_once_per_matching_minute() -> None:
    gate = RetrainGate(RetrainPolicySpec(volume=3))
    asked = []
    for n in range(1, 10):
        gate.labelled()
        asked.append(gate.due(n_seen=n, now=float(n)))
    assert asked == [None, None, "volume"] * 3
    gate = RetrainGate(RetrainPolicySpec(schedule="0 * * * *"))
    top_of_hour = datetime(2026, 3, 1, 5, 0, tzinfo=UTC).timestamp()
    answers = [gate.due(n_seen=i, now=top_of_hour + s) for i, s in enumerate((-1, 0, 10, 59, 60, 3600))]
    assert answers == [None, "schedule", None, None, None, "schedule"]


# -- in the feedback processor -------------------------------------------------------------------------------


def _config(policy: dict[str, object]) -> LearnersConfig:
    learner = {"task": "binary", "retrain_model": "sea-retrain", "retrain_policy": policy}
    return LearnersConfig.from_mapping({"strict": True, "learners": {"sea": learner}})


async def test_a_policy_that_does_not_list_error_keeps_drift_events_but_sends_no_request() -> None:
    r = rig(learners=_config({"reasons": ["input"]}))
    result = await r.processor.process(r.state, records(sea_events()))
    drifts = [e for e in result.outputs if isinstance(e, DriftEvent)]
    assert drifts and not [e for e in result.outputs if isinstance(e, RetrainRequest)]
    status = r.state.statuses()["sea"]
    assert status["retrain_gate"]["gated"] == {"reason_not_allowed:error": len(drifts)}
    assert r.state.topic == TOPIC


async def test_a_volume_policy_asks_with_reason_volume() -> None:
    r = rig(learners=_config({"reasons": [], "volume": 1000}))
    result = await r.processor.process(r.state, records(sea_events()))
    retrains = [e for e in result.outputs if isinstance(e, RetrainRequest)]
    assert [(e.reason, e.model, e.drift_event_id) for e in retrains] == [("volume", "sea-retrain", None)] * 4
    assert r.state.statuses()["sea"]["retrain_gate"]["requested"] == {"volume": 4}
