"""Feedback to target: label, then rating, then signal; every impossible mapping is a LabelError."""

from __future__ import annotations

from typing import Any

import pytest

from learners.config import LabelSpec
from learners.labels import Target, resolve_target
from schemas.errors import InvalidEvent, LabelError

SPEC = LabelSpec()

# (task, feedback fields, expected target)
MAPPED: list[tuple[str, dict[str, Any], Target]] = [
    # explicit labels, coerced per task
    ("binary", {"label": True}, Target(True, 1.0)),
    ("binary", {"label": 0}, Target(False, 1.0)),
    ("binary", {"label": 1}, Target(True, 1.0)),
    ("binary", {"label": 1.0}, Target(True, 1.0)),
    ("binary", {"label": "TRUE"}, Target(True, 1.0)),
    ("binary", {"label": " no "}, Target(False, 1.0)),
    ("binary", {"label": "Pos"}, Target(True, 1.0)),
    ("binary", {"label": "neg"}, Target(False, 1.0)),
    ("binary", {"label": "1"}, Target(True, 1.0)),
    ("binary", {"label": "0"}, Target(False, 1.0)),
    ("regression", {"label": 3}, Target(3.0, 1.0)),
    ("regression", {"label": -2.5}, Target(-2.5, 1.0)),
    ("multiclass", {"label": "cat"}, Target("cat", 1.0)),
    ("multiclass", {"label": 2}, Target(2, 1.0)),
    ("multiclass", {"label": 2.0}, Target(2, 1.0)),
    ("multiclass", {"label": True}, Target(True, 1.0)),
    # the label wins over rating and signal
    ("binary", {"label": False, "rating": 0.9, "signal": "thumbs_up"}, Target(False, 1.0)),
    # ratings
    ("binary", {"rating": 0.5}, Target(True, 1.0)),
    ("binary", {"rating": 0.49}, Target(False, 1.0)),
    ("regression", {"rating": 4.5}, Target(4.5, 1.0)),
    ("multiclass", {"rating": 4.0}, Target("4", 1.0)),
    # the rating wins over the signal
    ("binary", {"rating": 0.1, "signal": "thumbs_up"}, Target(False, 1.0)),
    # implicit signals: label and weight from the rule
    ("binary", {"signal": "thumbs_up"}, Target(True, 1.0)),
    ("binary", {"signal": "thumbs_down"}, Target(False, 1.0)),
    ("binary", {"signal": "click"}, Target(True, 0.5)),
    ("binary", {"signal": "copy"}, Target(True, 0.7)),
    ("binary", {"signal": "share"}, Target(True, 0.8)),
    ("binary", {"signal": "skip"}, Target(False, 0.5)),
    ("binary", {"signal": "regenerate"}, Target(False, 0.7)),
    ("binary", {"signal": "dwell_ms", "signal_value": 10000}, Target(True, 0.3)),
    ("binary", {"signal": "dwell_ms", "signal_value": 9999.9}, Target(False, 0.3)),
]


@pytest.mark.parametrize(("task", "feedback", "expected"), MAPPED)
def test_feedback_maps_to_target(task: str, feedback: dict[str, Any], expected: Target) -> None:
    target = resolve_target(task=task, spec=SPEC, **feedback)
    assert target == expected
    assert type(target.y) is type(expected.y)


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("binary", {}, "no label, rating or signal"),
    ("binary", {"label": 2}, "binary"),
    ("binary", {"label": 0.5}, "binary"),
    ("binary", {"label": "maybe"}, "'maybe'"),
    ("regression", {"label": "3.5"}, "finite number"),
    ("regression", {"label": True}, "finite number"),
    ("regression", {"label": float("nan")}, "finite number"),
    ("regression", {"signal": "click"}, "signal 'click'"),
    ("multiclass", {"label": 2.5}, "class"),
    ("multiclass", {"rating": 3.5}, "whole number"),
    ("binary", {"rating": float("inf")}, "rating"),
    ("binary", {"signal": "wink"}, "unknown signal 'wink'"),
    ("binary", {"signal": "dwell_ms"}, "signal_value"),
    ("binary", {"signal": "dwell_ms", "signal_value": float("nan")}, "signal_value"),
]


@pytest.mark.parametrize(("task", "feedback", "message"), REFUSED)
def test_unmappable_feedback_raises_label_error(task: str, feedback: dict[str, Any], message: str) -> None:
    with pytest.raises(LabelError, match=message) as excinfo:
        resolve_target(task=task, spec=SPEC, **feedback)
    assert isinstance(excinfo.value, InvalidEvent) and excinfo.value.reason == "unmappable_label"


def test_custom_rules_merge_over_the_defaults() -> None:
    spec = LabelSpec(
        rating_threshold=4,
        dwell_ms_threshold=2000,
        signals={"click": {"label": True, "weight": 0.2}, "bookmark": {"label": True, "weight": 0.9}},
    )
    assert resolve_target(task="binary", spec=spec, signal="click") == Target(True, 0.2)
    assert resolve_target(task="binary", spec=spec, signal="bookmark") == Target(True, 0.9)
    assert resolve_target(task="binary", spec=spec, signal="thumbs_down") == Target(False, 1.0)
    assert resolve_target(task="binary", spec=spec, rating=3.9) == Target(False, 1.0)
    assert resolve_target(task="binary", spec=spec, signal="dwell_ms", signal_value=2500) == Target(True, 0.3)


def test_rules_can_carry_class_and_number_labels() -> None:
    spec = LabelSpec(signals={"star": {"label": "great"}, "five": {"label": 5}})
    assert resolve_target(task="multiclass", spec=spec, signal="star") == Target("great", 1.0)
    assert resolve_target(task="regression", spec=spec, signal="five") == Target(5.0, 1.0)
