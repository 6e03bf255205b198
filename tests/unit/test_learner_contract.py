"""One contract every learner family meets, whatever its task (River's ``checks`` style)."""

from __future__ import annotations

import copy
import json
import math
import pickle
from typing import Any

import pytest
from river.datasets import synth

from learners.config import LearnerSpec
from learners.labels import Target
from learners.models import models_for
from learners.online import OnlineLearner
from learners.snapshot import dump_snapshot, load_snapshot

KEY = b"contract-test-key-0123456789abcdef"

FAMILIES = [(task, model) for task in ("binary", "multiclass", "regression") for model in models_for(task)]


def _source(task: str, seed: int) -> Any:
    if task == "binary":
        return synth.SEA(variant=0, seed=seed)
    if task == "multiclass":
        return synth.RandomRBF(seed_model=seed, seed_sample=seed, n_classes=3, n_features=4)
    return synth.Friedman(seed=seed)


def events(task: str, n: int, seed: int = 7, start: int = 0) -> list[tuple[dict[str, Any], Target]]:
    """A stream with every kind of feature, some appearing and disappearing, and varied weights."""
    out = []
    for i, (x, y) in enumerate(_source(task, seed).take(start + n)):
        if i < start:
            continue
        features: dict[str, Any] = {f"f{k}": v for k, v in x.items()}
        if i % 7 == 0:
            del features["f0"]  # a feature that disappears now and then
        if 100 <= i < 200:
            features["late"] = float(i % 5)  # appears mid-stream, then is gone for good
        features["plan"] = ("free", "pro", "team")[i % 3]
        features["vip"] = i % 2 == 0
        features["seats"] = i % 4
        if i % 5 == 0:
            features["__text__"] = "Great answer, thanks!" if i % 10 else "It's wrong; regenerate it."
        out.append((features, Target(y=y, weight=1.0 if i % 4 else 0.5)))
    return out


def spec_for(task: str, model: str) -> LearnerSpec:
    params: dict[str, float | int | str | bool] = {"n_models": 3} if model == "adaptive_random_forest" else {}
    return LearnerSpec(task=task, model=model, params=params, drift={"grace": 0, "cooldown": 0})


def same(a: Any, b: Any) -> bool:
    """Exact equality that also holds for NaN (JSON writes NaN the same way twice)."""
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True, default=repr)


def trained(task: str, model: str, n: int = 300) -> OnlineLearner:
    learner = OnlineLearner("contract", spec_for(task, model))
    for x, target in events(task, n):
        learner.learn_one(x, target)
    return learner


def assert_same_behaviour(a: OnlineLearner, b: OnlineLearner, stream: list[tuple[dict[str, Any], Target]]) -> None:
    for x, target in stream:
        assert same(a.predict_one(x), b.predict_one(x))
        assert same(a.predict_proba_one(x), b.predict_proba_one(x))
        out_a, out_b = a.learn_one(x, target), b.learn_one(x, target)
        assert same(out_a.prediction, out_b.prediction)
        assert same(out_a.proba, out_b.proba)
        assert out_a.error == out_b.error or (math.isnan(out_a.error) and math.isnan(out_b.error))
        assert out_a.drift == out_b.drift
    assert a.n_seen == b.n_seen
    assert same(a.metrics, b.metrics)
    assert same(a.status(), b.status())


@pytest.fixture(params=FAMILIES, ids=[f"{task}-{model}" for task, model in FAMILIES])
def family(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


def test_input_is_not_mutated(family: tuple[str, str]) -> None:
    learner = OnlineLearner("contract", spec_for(*family))
    for x, target in events(family[0], 250):
        before = copy.deepcopy(x)
        learner.predict_one(x)
        learner.predict_proba_one(x)
        learner.learn_one(x, target)
        assert x == before


def test_features_that_come_and_go_do_not_crash(family: tuple[str, str]) -> None:
    task, _ = family
    learner = OnlineLearner("contract", spec_for(*family))
    for i, (x, target) in enumerate(events(task, 400)):
        outcome = learner.learn_one(x, target)
        assert outcome.n_seen == i + 1
        assert math.isfinite(outcome.error)
    assert learner.predict_one({"unseen": 1.0, "colour": "red", "__text__": "never seen words"}) is not None
    assert learner.n_seen == 400
    assert all(math.isfinite(value) for value in learner.metrics.values())


def test_snapshot_round_trip_continues_identically(family: tuple[str, str]) -> None:
    learner = trained(*family)
    blob = dump_snapshot(learner, key=KEY, n_seen=learner.n_seen, offsets={"learnloop.feedback:0": 299})
    restored, meta = load_snapshot(blob, key=KEY)
    assert isinstance(restored, OnlineLearner)
    assert meta.n_seen == restored.n_seen == 300
    assert_same_behaviour(learner, restored, events(family[0], 200, start=300))


def test_pickle_round_trip(family: tuple[str, str]) -> None:
    learner = trained(*family)
    restored = pickle.loads(pickle.dumps(learner))
    assert restored.name == learner.name and restored.spec == learner.spec
    assert_same_behaviour(learner, restored, events(family[0], 200, start=300))


def test_clone_equals_a_fresh_learner(family: tuple[str, str]) -> None:
    learner = trained(*family)
    clone = learner.clone()
    assert clone.n_seen == 0 and clone.name == learner.name and clone.spec == learner.spec
    assert_same_behaviour(clone, OnlineLearner(learner.name, learner.spec), events(family[0], 300))


def test_status_is_json_ready(family: tuple[str, str]) -> None:
    learner = trained(*family, n=100)
    status = json.loads(json.dumps(learner.status()))
    assert status["name"] == "contract"
    assert (status["task"], status["model"]) == family
    assert status["n_learned"] == 100
    assert set(status) == {
        "name", "task", "model", "n_learned", "metrics", "drifts", "last_drift", "suppressed_drifts",
    }  # fmt: skip
