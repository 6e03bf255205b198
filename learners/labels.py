"""Feedback to training target: an explicit label wins, then a rating, then an implicit signal.

The arguments are the matching ``FeedbackEvent`` fields, passed one by one so this module
does not depend on the wire format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from learners.config import LabelSpec
from schemas.errors import LabelError

__all__ = ["DWELL_SIGNAL", "LabelValue", "Target", "coerce_label", "resolve_target"]

LabelValue = bool | int | float | str

#: The one signal whose meaning depends on its value: dwell time in milliseconds.
DWELL_SIGNAL = "dwell_ms"

_TRUE_WORDS = frozenset({"true", "1", "yes", "pos"})
_FALSE_WORDS = frozenset({"false", "0", "no", "neg"})


@dataclass(frozen=True, slots=True)
class Target:
    """What a learner learns from one event: the target and its sample weight.

    >>> Target(y=True, weight=0.5)
    Target(y=True, weight=0.5)
    """

    y: LabelValue
    weight: float


def resolve_target(
    *,
    task: str,
    spec: LabelSpec,
    label: LabelValue | None = None,
    rating: float | None = None,
    signal: str | None = None,
    signal_value: float | None = None,
) -> Target:
    """Map one piece of feedback to a ``Target``; ``LabelError`` when it cannot be done.

    >>> spec = LabelSpec()
    >>> resolve_target(task="binary", spec=spec, label="yes")
    Target(y=True, weight=1.0)
    >>> resolve_target(task="binary", spec=spec, rating=0.2)
    Target(y=False, weight=1.0)
    >>> resolve_target(task="binary", spec=spec, signal="click")
    Target(y=True, weight=0.5)
    >>> resolve_target(task="binary", spec=spec, signal="dwell_ms", signal_value=12000)
    Target(y=True, weight=0.3)
    """
    if label is not None:
        return Target(coerce_label(task, label), 1.0)
    if rating is not None:
        return Target(_rating_label(task, spec, rating), 1.0)
    if signal is not None:
        if signal == DWELL_SIGNAL:
            if signal_value is None or not _is_finite_number(signal_value):
                raise LabelError(f"signal 'dwell_ms' needs a finite signal_value (milliseconds), got {signal_value!r}")
            dwelled = signal_value >= spec.dwell_ms_threshold
            return Target(coerce_label(task, dwelled, what="signal 'dwell_ms'"), spec.dwell_ms_weight)
        rule = spec.signals.get(signal)
        if rule is None:
            known = ", ".join(sorted([*spec.signals, DWELL_SIGNAL]))
            raise LabelError(f"unknown signal {signal!r} (mapped signals: {known})")
        return Target(coerce_label(task, rule.label, what=f"signal {signal!r}"), rule.weight)
    raise LabelError("feedback carries no label, rating or signal")


def coerce_label(task: str, label: LabelValue, *, what: str = "label") -> LabelValue:
    """A label in the type the task's River models expect (bool, class, or float).

    >>> coerce_label("binary", "NO"), coerce_label("regression", 3), coerce_label("multiclass", "cat")
    (False, 3.0, 'cat')
    """
    if task == "binary":
        return _binary(label, what)
    if task == "regression":
        if not _is_finite_number(label):
            raise LabelError(f"{what} for a regression learner must be a finite number, got {label!r}")
        return float(label)
    if task == "multiclass":
        if isinstance(label, float):
            if not label.is_integer():
                raise LabelError(f"{what} for a multiclass learner must be a class (str/int/bool), got {label!r}")
            return int(label)
        return label
    raise LabelError(f"unknown task {task!r}")


def _binary(label: LabelValue, what: str) -> bool:
    if isinstance(label, bool):
        return label
    if isinstance(label, int | float) and label in (0, 1):
        return bool(label)
    if isinstance(label, str):
        word = label.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise LabelError(
        f"{what} for a binary learner must be a bool, 0/1 or one of true/false/yes/no/pos/neg, got {label!r}"
    )


def _rating_label(task: str, spec: LabelSpec, rating: float) -> LabelValue:
    if not _is_finite_number(rating):
        raise LabelError(f"rating must be a finite number, got {rating!r}")
    if task == "binary":
        return rating >= spec.rating_threshold
    if task == "regression":
        return float(rating)
    if task == "multiclass":
        if not float(rating).is_integer():
            raise LabelError(
                f"rating for a multiclass learner must be a whole number (it names a class), got {rating!r}"
            )
        return str(int(rating))
    raise LabelError(f"unknown task {task!r}")


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
