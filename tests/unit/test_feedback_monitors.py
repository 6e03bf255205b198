"""The monitors in the feedback processor: input drift on learned events, prediction drift and the
estimate on served predictions, requests gated by the retrain policy; nothing when unconfigured."""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

from prometheus_client import CollectorRegistry

from learners.config import LearnersConfig
from schemas import DriftEvent, DriftEventV2, RetrainRequest
from streams.metrics import FeedbackMetrics
from tests.unit.test_feedback_processor import PREDICTIONS, feedback, label_only, prediction, records, rig


def _config(**extra: Any) -> LearnersConfig:
    learner = {"task": "binary", "retrain_model": "sea-retrain", **extra}
    return LearnersConfig.from_mapping({"strict": True, "learners": {"sea": learner}})


def _covariate_shift(n: int, seed: int = 3) -> list[Any]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = {"x1": rng.gauss(0 if i < n // 2 else 2.5, 1), "x2": rng.gauss(0, 1)}
        out.append(feedback(features=x, label=x["x1"] + x["x2"] + rng.gauss(0, 0.5) > 0))
    return out


async def test_covariate_shift_reports_input_drift_and_the_default_policy_asks_no_retrain() -> None:
    r = rig(learners=_config(input_drift={"window": 500}))
    result = await r.processor.process(r.state, records(_covariate_shift(8000)))
    inputs = [e for e in result.outputs if isinstance(e, DriftEventV2)]
    assert [(e.kind, e.feature) for e in inputs] == [("input", "x1")]
    assert 4000 < inputs[0].n_seen <= 4500
    assert not [e for e in result.outputs if isinstance(e, (DriftEvent, RetrainRequest))]
    status = r.state.statuses()["sea"]
    assert status["retrain_gate"]["gated"] == {"reason_not_allowed:input": 1}
    assert status["monitors"]["input_drifts"] == 1 and status["monitors"]["input_features"] == ["x1", "x2"]
    assert json.loads(json.dumps(status, allow_nan=False)) == status
    restored = pickle.loads(pickle.dumps(r.state))
    assert restored.slots["sea"].inputs.drifts == 1


async def test_a_policy_that_lists_input_asks_with_the_drift_event_it_came_from() -> None:
    r = rig(learners=_config(input_drift={"window": 500}, retrain_policy={"reasons": ["input"]}))
    result = await r.processor.process(r.state, records(_covariate_shift(8000)))
    [drift] = [e for e in result.outputs if isinstance(e, DriftEventV2)]
    [retrain] = [e for e in result.outputs if isinstance(e, RetrainRequest)]
    assert (retrain.reason, retrain.drift_event_id) == ("drift", drift.event_id)


async def test_served_predictions_drift_and_are_estimated_before_their_labels() -> None:
    r = rig(learners=_config(prediction_drift={"window": 100}, performance_estimate={"chunk": 100}))
    confident = [prediction(f"a{i}", prediction=True, probability=0.95) for i in range(300)]
    unsure = [prediction(f"b{i}", prediction=True, probability=0.55) for i in range(100)]
    result = await r.processor.store_predictions(records(confident + unsure, topic=PREDICTIONS))
    kinds = sorted((e.kind, e.feature) for e in result.outputs if isinstance(e, DriftEventV2))
    assert kinds == [("estimated_performance", None), ("prediction", "score")]
    assert result.drifts == 2
    # The labels arrive: half the unsure ones were wrong, and the estimate is scored against them.
    labels = [label_only(f"b{i}", label=i % 2 == 0) for i in range(100)]
    await r.processor.process(r.state, records(labels))
    estimate = r.state.statuses()["sea"]["monitors"]["estimate"]
    assert estimate["estimated_accuracy"] == 0.55
    assert estimate["realized_accuracy"] == 0.5
    assert abs(estimate["estimation_error"] - 0.05) < 1e-9


async def test_a_learner_without_monitors_gets_none() -> None:
    r = rig()
    assert r.processor._served.any is False
    await r.processor.store_predictions(records([prediction("p1", probability=0.9)], topic=PREDICTIONS))
    await r.processor.process(r.state, records([*_covariate_shift(200), label_only("p1")]))
    slot = r.state.slots["sea"]
    assert (slot.inputs, slot.served) == (None, None)
    assert "monitors" not in r.state.statuses()["sea"]


async def test_metrics_export_the_estimate_and_the_gated_requests_next_to_the_realized_metrics() -> None:
    r = rig(learners=_config(input_drift={"window": 500}, performance_estimate={"chunk": 100}))
    preds = [prediction(f"p{i}", prediction=True, probability=0.8) for i in range(100)]
    await r.processor.store_predictions(records(preds, topic=PREDICTIONS))
    labels = [label_only(f"p{i}", label=i % 4 != 0) for i in range(100)]
    await r.processor.process(r.state, records(labels + _covariate_shift(8000), start=0))
    metrics = FeedbackMetrics(CollectorRegistry())
    metrics.snapshot_written("learnloop.feedback", 0, r.state.statuses())

    def metric(name: str) -> float | None:
        labels = {"learner": "sea", "partition": "0", "metric": name}
        return metrics.registry.get_sample_value("learnloop_learner_metric", labels)

    assert metric("estimated_accuracy") == 0.8
    error = metric("estimation_error")
    assert error is not None and abs(error - 0.05) < 1e-9
    assert (metric("retrain_gated_reason_not_allowed_input") or 0) >= 1  # the joined features moved too
    assert metric("accuracy") is not None
