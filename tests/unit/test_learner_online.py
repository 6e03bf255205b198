"""OnlineLearner against plain River: same predictions, metrics and drift positions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from river import datasets, drift, linear_model, metrics, preprocessing, tree

from learners.config import DriftSpec, LearnerSpec
from learners.labels import Target
from learners.models import MAX_TEXT_TOKENS, FeaturePrep, with_text
from learners.online import OnlineLearner
from schemas.errors import InvalidEvent


def sea(variant: int, n: int, seed: int) -> list[tuple[dict[str, Any], bool]]:
    return [({str(k): v for k, v in x.items()}, y) for x, y in datasets.synth.SEA(variant=variant, seed=seed).take(n)]


def sea_with_switch() -> list[tuple[dict[str, Any], bool]]:
    """5k SEA events whose concept changes at event 2,501."""
    return sea(0, 2500, 1) + sea(3, 2500, 2)


def test_numeric_stream_matches_plain_river_pipeline_bit_for_bit() -> None:
    stream = sea_with_switch()
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    accuracy, f1, log_loss, adwin = metrics.Accuracy(), metrics.F1(), metrics.LogLoss(), drift.ADWIN()
    ref_predictions, ref_probas, ref_drifts = [], [], []
    for i, (x, y) in enumerate(stream, start=1):
        proba = model.predict_proba_one(x)
        y_pred = model.predict_one(x)
        accuracy.update(y, y_pred)
        f1.update(y, y_pred)
        log_loss.update(y, proba)
        adwin.update(float(y_pred != y))
        if adwin.drift_detected:
            ref_drifts.append(i)
        model.learn_one(x, y)
        ref_predictions.append(y_pred)
        ref_probas.append(proba)

    learner = OnlineLearner("sea", LearnerSpec(drift=DriftSpec(grace=0, cooldown=0, direction="any")))
    outcomes = [learner.learn_one(x, Target(y=y, weight=1.0)) for x, y in stream]

    assert ref_drifts, "the reference stream should drift, or the drift comparison proves nothing"
    assert [o.prediction for o in outcomes] == ref_predictions
    assert [o.proba for o in outcomes] == ref_probas
    assert [o.drift.n_seen for o in outcomes if o.drift is not None] == ref_drifts
    got = learner.metrics
    assert (got["accuracy"], got["f1"], got["log_loss"]) == (accuracy.get(), f1.get(), log_loss.get())
    assert learner.n_seen == 5000 and learner.drifts == len(ref_drifts)


def test_regression_matches_plain_river_pipeline() -> None:
    stream = list(datasets.synth.Friedman(seed=3).take(2000))
    stream = [({f"x{k}": v for k, v in x.items()}, y) for x, y in stream]
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    mae, rmse = metrics.MAE(), metrics.RMSE()
    predictions = []
    for x, y in stream:
        y_pred = model.predict_one(x)
        mae.update(y, y_pred)
        rmse.update(y, y_pred)
        model.learn_one(x, y)
        predictions.append(y_pred)

    learner = OnlineLearner("friedman", LearnerSpec(task="regression"))
    outcomes = [learner.learn_one(x, Target(y=y, weight=1.0)) for x, y in stream]
    assert [o.prediction for o in outcomes] == predictions
    assert [o.error for o in outcomes] == [abs(y - p) for (_, y), p in zip(stream, predictions, strict=True)]
    assert (learner.metrics["mae"], learner.metrics["rmse"]) == (mae.get(), rmse.get())


def test_weights_reach_estimators_that_take_them() -> None:
    stream = sea(0, 500, 4)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    learner = OnlineLearner("w", LearnerSpec())
    for i, (x, y) in enumerate(stream):
        weight = 0.25 if i % 3 else 2.0
        assert learner.predict_proba_one(x) == model.predict_proba_one(x)
        learner.learn_one(x, Target(y=y, weight=weight))
        model.learn_one(x, y, w=weight)


@pytest.mark.parametrize("model", ["passive_aggressive", "naive_bayes", "adaptive_random_forest"])
def test_weights_are_ignored_by_estimators_that_cannot_take_them(model: str) -> None:
    stream = sea(0, 300, 5)
    spec = LearnerSpec(model=model, params={"n_models": 3} if model == "adaptive_random_forest" else {})
    heavy, light = OnlineLearner("a", spec), OnlineLearner("b", spec)
    for x, y in stream:
        assert heavy.learn_one(x, Target(y, 1.0)).proba == light.learn_one(x, Target(y, 0.3)).proba


def test_untrained_classifier_predicts_none_and_counts_an_error() -> None:
    learner = OnlineLearner("tree", LearnerSpec(model="hoeffding_adaptive_tree"))
    outcome = learner.learn_one({"a": 1.0}, Target(y=True, weight=1.0))
    assert (outcome.prediction, outcome.proba, outcome.error, outcome.n_seen) == (None, {}, 1.0, 1)
    assert learner.metrics["accuracy"] == 0.0


def test_matches_plain_river_tree_on_numeric_features() -> None:
    stream = sea(0, 1500, 6)
    model = tree.HoeffdingAdaptiveTreeClassifier(seed=42)
    learner = OnlineLearner("tree", LearnerSpec(model="hoeffding_adaptive_tree"))
    for x, y in stream:
        assert learner.learn_one(x, Target(y, 1.0)).prediction == model.predict_one(x)
        model.learn_one(x, y)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), [1, 2], {"a": 1}])
def test_bad_feature_values_are_refused_before_anything_is_learned(bad: object) -> None:
    learner = OnlineLearner("sea", LearnerSpec())
    learner.learn_one({"a": 1.0}, Target(True, 1.0))
    with pytest.raises(InvalidEvent) as excinfo:
        learner.learn_one({"a": 1.0, "b": bad}, Target(True, 1.0))  # type: ignore[dict-item]
    assert excinfo.value.reason == "bad_feature" and "'b'" in str(excinfo.value)
    untouched = OnlineLearner("sea", LearnerSpec())
    untouched.learn_one({"a": 1.0}, Target(True, 1.0))
    assert learner.n_seen == 1
    assert learner.metrics == untouched.metrics
    assert learner.predict_proba_one({"a": 1.0}) == untouched.predict_proba_one({"a": 1.0})


def test_feature_prep_encodes_every_kind_of_value() -> None:
    prep = FeaturePrep()
    x = {"n": 3, "f": 0.5, "yes": True, "no": False, "plan": "pro", "gone": None}
    assert prep.transform_one(x) == {"n": 3, "f": 0.5, "yes": 1.0, "no": 0.0, "plan=pro": 1.0}
    text = with_text({"n": 1}, "The cat, the CAT and the dog's bone 42")
    assert prep.transform_one(text) == {
        "n": 1, "text:the": 3.0, "text:cat": 2.0, "text:and": 1.0, "text:dog's": 1.0, "text:bone": 1.0, "text:42": 1.0,
    }  # fmt: skip


def test_text_is_capped_at_max_tokens() -> None:
    features = FeaturePrep().transform_one({"__text__": "word " * (MAX_TEXT_TOKENS + 500)})
    assert features == {"text:word": float(MAX_TEXT_TOKENS)}


def test_with_text_merges_without_touching_the_input() -> None:
    features = {"a": 1.0}
    assert with_text(features, "hi") == {"a": 1.0, "__text__": "hi"}
    assert features == {"a": 1.0}
    assert with_text(None, None) == {}


def test_status_reports_the_last_drift() -> None:
    learner = OnlineLearner("sea", LearnerSpec(retrain_model="sea-clf"))
    for x, y in sea_with_switch():
        learner.learn_one(x, Target(y, 1.0))
    status = json.loads(json.dumps(learner.status()))
    assert status["drifts"] == learner.drifts >= 1
    assert learner.last_drift is not None
    assert status["last_drift"]["n_seen"] == learner.last_drift.n_seen > 2500
    assert status["last_drift"]["detector"] == "adwin"
    assert status["last_drift"]["metric"] == "misclassification"
    assert set(status["metrics"]) == {"accuracy", "f1", "log_loss", "rolling_accuracy", "rolling_f1"}


def test_regression_learner_has_no_probabilities() -> None:
    learner = OnlineLearner("r", LearnerSpec(task="regression"))
    outcome = learner.learn_one({"a": 2.0}, Target(y=3.0, weight=1.0))
    assert (outcome.prediction, outcome.proba, outcome.error) == (0.0, None, 3.0)
    assert learner.predict_proba_one({"a": 2.0}) is None
    assert learner.last_drift is None


def test_text_only_feedback_is_learned() -> None:
    # Word features are sparse indicators: scaling them like dense numbers would zero them out.
    good, bad = ["great", "helpful", "clear"], ["awful", "slow", "wrong"]
    learner = OnlineLearner("answers", LearnerSpec())
    for i in range(600):
        positive = i % 2 == 0
        word = (good if positive else bad)[i % 3]
        learner.learn_one({"__text__": f"ticket {i}: the answer was {word}"}, Target(y=positive, weight=1.0))
    assert learner.metrics["rolling_accuracy"] > 0.95
    assert learner.predict_one({"__text__": "so helpful"}) is True
