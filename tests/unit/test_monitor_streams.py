"""Streams whose ground truth is known: each kind of drift fires where it should, and only there."""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from learners.config import LearnerSpec
from learners.labels import Target
from learners.monitors import InputDriftMonitor, PerformanceEstimator, PredictionDriftMonitor
from learners.online import OnlineLearner

SHIFT = 10_000
LAG = 5_000


def _point(rng: random.Random, scale: float, shift: float = 0.0) -> dict[str, float]:
    return {f"x{k}": rng.gauss(shift if k == 0 else 0.0, scale) for k in range(4)}


def _concept(x: dict[str, float], rng: random.Random, flipped: bool = False) -> bool:
    y = x["x0"] + x["x1"] + rng.gauss(0, 0.5) > 0
    return (not y) if flipped else y


def _learner() -> OnlineLearner:
    return OnlineLearner("truth", LearnerSpec(task="binary", model="logistic_regression"))


def test_covariate_shift_with_the_same_concept_is_input_drift_not_error_drift() -> None:
    rng = random.Random(11)
    learner, monitor = _learner(), InputDriftMonitor(window=500)
    input_drifts, error_drifts = [], []
    for i in range(2 * SHIFT):
        x = _point(rng, 1.0, shift=0.0 if i < SHIFT else 2.5)  # the inputs move; the labelling rule does not
        input_drifts += monitor.update(x)
        if learner.learn_one(x, Target(y=_concept(x, rng), weight=1.0)).drift is not None:
            error_drifts.append(i)
    assert error_drifts == []
    assert [s.feature for s in input_drifts] == ["x0"]
    assert SHIFT < input_drifts[0].n_seen <= SHIFT + 1000
    assert input_drifts[0].after["mean"] > 2 > 0.5 > input_drifts[0].before["mean"]


def test_concept_shift_with_the_same_inputs_is_error_drift_not_input_drift() -> None:
    rng = random.Random(12)
    learner, monitor = _learner(), InputDriftMonitor(window=500)
    input_drifts, error_drifts = [], []
    for i in range(2 * SHIFT):
        x = _point(rng, 1.0)
        input_drifts += monitor.update(x)
        outcome = learner.learn_one(x, Target(y=_concept(x, rng, flipped=i >= SHIFT), weight=1.0))
        if outcome.drift is not None:
            error_drifts.append(outcome.n_seen)
    assert input_drifts == []
    assert error_drifts and SHIFT < error_drifts[0] < SHIFT + 1000


def test_a_shift_seen_in_predictions_is_reported_long_before_the_late_labels_show_it() -> None:
    """Served inputs crowd the decision boundary: confidence and accuracy fall, labels come 5,000 events late."""
    rng = random.Random(13)
    learner = _learner()
    for _ in range(5000):  # a model trained on the old world, where most inputs are far from the boundary
        x = _point(rng, 3.0)
        learner.learn_one(x, Target(y=_concept(x, rng), weight=1.0))
    served_drift, estimate, error_drift = PredictionDriftMonitor(window=500), PerformanceEstimator(chunk=500), None
    fired: dict[str, int] = {}
    waiting: deque[tuple[str, dict[str, float], bool, Any]] = deque()
    for i in range(3 * SHIFT):
        x = _point(rng, 3.0 if i < SHIFT else 0.4)
        proba = learner.predict_proba_one(x) or {}
        predicted = max(proba, key=proba.__getitem__)
        prediction_id = f"p{i}"
        for signal in served_drift.update(predicted, proba[predicted], "v1"):
            fired.setdefault(signal.kind, i)
        for signal in estimate.observe_prediction(prediction_id, predicted, proba[predicted]):
            fired.setdefault(signal.kind, i)
        waiting.append((prediction_id, x, predicted, _concept(x, rng)))
        if len(waiting) > LAG:  # the label of the prediction made LAG events ago arrives now
            old_id, old_x, old_predicted, label = waiting.popleft()
            estimate.observe_label(old_id, correct=old_predicted == label)
            if learner.learn_one(old_x, Target(y=label, weight=1.0)).drift is not None and error_drift is None:
                error_drift = i
    assert fired["prediction"] - SHIFT <= 1000
    assert fired["estimated_performance"] - SHIFT <= 1000
    assert error_drift is not None and error_drift - SHIFT > LAG
    # Once the labels caught up the estimate was checked against them.
    status = estimate.status()
    assert status["realized_accuracy"] is not None and status["estimation_error"] < 0.1
