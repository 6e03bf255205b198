"""Routing requests between a model's champion and challenger while a rollout runs.

The rollout controller publishes the routing state of each model on ``learnloop.rollouts``
(``RolloutEvent``, the latest per model counts). A serving process (the gateway, the
subscriber SDK) routes every input with :func:`route`:

- ``running`` canary/ab: ``assign(subject_id or prediction_id, share, salt=rollout_id)`` picks
  the arm; that arm's version answers. Sticky per subject within a step, monotone across steps.
- ``running`` shadow: the champion answers every input; the challenger predicts a copy off the
  answer path, logged with ``shadow_of`` and never returned.
- ``paused``: the champion answers (the share is frozen at 0 for serving).
- anything else, or no rollout: no routing; the version behind the followed alias answers.

An arm whose version is not loaded yet (the challenger is still loading) is not served: the
champion answers and is logged as the champion, so a half-loaded version never answers and
the controller never counts a challenger answer that the challenger did not give.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from learners.rollout import Arm, assign
from schemas import PredictionEvent, RolloutEvent

ROUTING_STATES = frozenset({"running", "paused"})


@dataclass(frozen=True, slots=True)
class Route:
    """Who answers one input, and who predicts its shadow copy (if anyone)."""

    version: str
    arm: Arm | None  # None: no rollout routes this model
    rollout_id: str | None
    shadow_version: str | None = None


def route(
    rollout: RolloutEvent | None, key: str, *, served: str, loaded: frozenset[str]
) -> Route:
    """The route of one input keyed by ``key`` (its subject id, else its prediction id).

    ``served`` is the version behind the followed alias; ``loaded`` every version loaded now.

    >>> ev = RolloutEvent(source="t", model="m", rollout_id="r1", state="running", mode="canary", step=1,
    ...                   share=100.0, champion_version="3", challenger_version="4")
    >>> route(ev, "u1", served="3", loaded=frozenset({"3", "4"}))
    Route(version='4', arm='challenger', rollout_id='r1', shadow_version=None)
    >>> route(ev, "u1", served="3", loaded=frozenset({"3"})).version  # the challenger is still loading
    '3'
    >>> route(None, "u1", served="3", loaded=frozenset({"3"}))
    Route(version='3', arm=None, rollout_id=None, shadow_version=None)
    """
    if rollout is None or rollout.state not in ROUTING_STATES or rollout.champion_version is None:
        return Route(served, None, None)
    champion = rollout.champion_version if rollout.champion_version in loaded else served
    if rollout.state == "paused":
        return Route(champion, "champion", rollout.rollout_id)
    challenger = rollout.challenger_version
    if rollout.mode == "shadow":
        return Route(champion, "champion", rollout.rollout_id, challenger if challenger in loaded else None)
    arm = assign(key, rollout.share, rollout.rollout_id)
    if arm == "challenger" and challenger in loaded:
        return Route(challenger, "challenger", rollout.rollout_id)
    return Route(champion, "champion", rollout.rollout_id)


def wanted_versions(rollout: RolloutEvent | None) -> frozenset[str]:
    """The versions a rollout needs loaded besides the followed alias's (none when it routes nothing)."""
    if rollout is None or rollout.state not in ROUTING_STATES or rollout.champion_version is None:
        return frozenset()
    return frozenset({rollout.champion_version, rollout.challenger_version})


@dataclass(frozen=True, slots=True)
class RoutedPrediction:
    """One answered input: what the answering version said, which version, which arm, and its id."""

    prediction_id: str
    model: str
    model_version: str
    label: Any
    probability: float | None
    arm: Arm | None = None
    rollout_id: str | None = None
    subject_id: str | None = None
    latency_ms: float | None = None

    def event(self, text: str, *, source: str, learner: str | None = None,
              shadow_of: str | None = None) -> PredictionEvent:  # fmt: skip
        """The ``PredictionEvent`` that logs it (``learner``: the model name unless a learner is involved)."""
        return PredictionEvent(
            source=source, prediction_id=self.prediction_id, learner=learner or self.model, text=text,
            prediction=_wire_label(self.label), probability=self.probability, model_version=self.model_version,
            model=self.model, subject_id=self.subject_id, rollout_id=self.rollout_id, arm=self.arm,
            shadow_of=shadow_of, latency_ms=self.latency_ms,
        )  # fmt: skip


def failed_event(
    text: str, *, prediction_id: str, model: str, version: str, route: Route, source: str,
    subject_id: str | None, latency_ms: float, shadow_of: str | None = None,
) -> PredictionEvent:  # fmt: skip
    """A prediction the version failed to make: logged too, so guardrails see serving errors."""
    return PredictionEvent(
        source=source, prediction_id=prediction_id, learner=model, text=text, prediction=None, model_version=version,
        model=model, subject_id=subject_id, rollout_id=route.rollout_id,
        arm="challenger" if shadow_of is not None else route.arm, shadow_of=shadow_of, latency_ms=latency_ms,
        failed=True,
    )  # fmt: skip


def new_prediction_id() -> str:
    return uuid.uuid4().hex


def rows(output: Any, n: int) -> list[tuple[Any, float | None]]:
    """``(label, probability)`` per input from a model's output: a DataFrame with ``label`` (and
    ``probability``) columns, as the registered text classifiers return, or a sequence of labels,
    ``(label, probability)`` pairs or ``{"label", "probability"}`` dicts.

    >>> rows([("a", 0.9), "b", {"label": "c", "probability": 0.5}], 3)
    [('a', 0.9), ('b', None), ('c', 0.5)]
    """
    if hasattr(output, "to_dict") and hasattr(output, "columns"):  # a pandas DataFrame, without importing pandas
        records: Sequence[Any] = output.to_dict(orient="records")
    elif hasattr(output, "tolist"):
        records = output.tolist()
    else:
        records = list(output)
    if len(records) != n:
        raise ValueError(f"the model answered {len(records)} predictions for {n} inputs")
    return [_row(r) for r in records]


def _row(record: Any) -> tuple[Any, float | None]:
    if isinstance(record, dict):
        if "label" not in record:
            raise ValueError(f"a prediction needs a 'label', got keys {sorted(record)}")
        return record["label"], _probability(record.get("probability"))
    if isinstance(record, tuple | list) and len(record) == 2 and isinstance(record[1], int | float):
        return record[0], _probability(record[1])
    return record, None


def _probability(value: Any) -> float | None:
    if value is None:
        return None
    p = float(value)
    return p if math.isfinite(p) and 0.0 <= p <= 1.0 else None


def _wire_label(label: Any) -> Any:
    """numpy scalars (``numpy.bool_``) as plain Python values; anything else as its string."""
    if hasattr(label, "item"):
        label = label.item()
    if isinstance(label, bool | int | str) or label is None:
        return label
    if isinstance(label, float) and math.isfinite(label):
        return label
    return str(label)
