"""One contract every drift monitor meets, whatever it watches (the learners' contract, for monitors)."""

from __future__ import annotations

import copy
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from learners.monitors import (
    CategoricalDriftDetector,
    InputDriftMonitor,
    NumericDriftDetector,
    PerformanceEstimator,
    PredictionDriftMonitor,
    TextDriftDetector,
)

N = 4000  # long enough for a reference window, several compared windows and the shift at N // 2


@dataclass(frozen=True)
class Case:
    build: Callable[[], Any]
    item: Callable[[int, random.Random, bool], Any]  # i, rng, high-cardinality -> one input
    feed: Callable[[Any, Any], Any]


def _numeric(i: int, rng: random.Random, wide: bool) -> float:
    return rng.gauss(0 if i < N // 2 else 2, 1) * (1e6 if wide else 1)


def _category(i: int, rng: random.Random, wide: bool) -> str:
    if wide:
        return f"user-{i}"  # every value new: the high-cardinality case
    return rng.choice(("a", "b") if i < N // 2 else ("a", "b", "c", "c"))


def _text(i: int, rng: random.Random, wide: bool) -> str:
    if wide:
        return " ".join(f"tok{i}-{k}" for k in range(rng.randint(1, 30)))
    words = ("thanks", "great", "answer", "wrong") if i < N // 2 else ("erreur", "fatale", "merci")
    return " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))


def _features(i: int, rng: random.Random, wide: bool) -> dict[str, Any]:
    x: dict[str, Any] = {f"f{k}": _numeric(i, rng, False) for k in range(5)}
    x["plan"] = _category(i, rng, False)
    x["vip"] = i % 3 == 0
    x["__text__"] = _text(i, rng, wide)
    if wide:
        x.update({f"sparse{rng.randrange(100_000)}": 1.0 for _ in range(10)})  # sparse, unbounded names
    return x


def _served(i: int, rng: random.Random, wide: bool) -> tuple[str, bool, float, str]:
    confident = i < N // 2
    score = rng.uniform(0.85, 1.0) if confident else rng.uniform(0.5, 0.7)
    version = f"v{i % 50}" if wide else f"v{i // 3000}"
    return f"p{i}", rng.random() < (0.2 if confident else 0.5), score, version


def _feed_served(monitor: PredictionDriftMonitor, item: tuple[str, bool, float, str]) -> Any:
    _, predicted, score, version = item
    return monitor.update(predicted, score, version)


def _feed_estimate(monitor: PerformanceEstimator, item: tuple[str, bool, float, str]) -> Any:
    prediction_id, predicted, score, _ = item
    out = monitor.observe_prediction(prediction_id, predicted, score)
    number = int(prediction_id[1:])
    if number >= 300 and number % 2 == 0:  # half the labels arrive, 300 events late
        monitor.observe_label(f"p{number - 300}", correct=number % 3 != 0)
    return (out, monitor.status())


CASES: dict[str, Case] = {
    "numeric": Case(lambda: NumericDriftDetector(window=200, feature="x"), _numeric, lambda m, v: m.update(v)),
    "categorical": Case(
        lambda: CategoricalDriftDetector(window=200, max_categories=5, feature="plan"),
        _category,
        lambda m, v: m.update(v),
    ),
    "text": Case(lambda: TextDriftDetector(window=200, vocab_size=50), _text, lambda m, v: m.update(v)),
    "input": Case(
        lambda: InputDriftMonitor(window=200, max_features=6, vocab_size=50, reselect_every=500),
        _features,
        lambda m, x: m.update(x),
    ),
    "prediction": Case(lambda: PredictionDriftMonitor(window=200, max_versions=3), _served, _feed_served),
    "estimate": Case(lambda: PerformanceEstimator(chunk=200, max_pending=500), _served, _feed_estimate),
}


def stream(case: Case, n: int = N, wide: bool = False, seed: int = 5) -> list[Any]:
    rng = random.Random(seed)
    return [case.item(i, rng, wide) for i in range(n)]


def run(case: Case, monitor: Any, items: list[Any]) -> list[str]:
    return [repr(case.feed(monitor, item)) for item in items]


@pytest.mark.parametrize("name", CASES)
def test_the_shift_in_the_stream_is_reported(name: str) -> None:
    case = CASES[name]
    monitor = case.build()
    run(case, monitor, stream(case))
    assert monitor.drifts >= 1
    assert monitor.last_drift.n_seen > N // 2


@pytest.mark.parametrize("name", CASES)
def test_pickle_round_trip_continues_identically(name: str) -> None:
    case = CASES[name]
    items = stream(case)
    original = case.build()
    run(case, original, items[: N // 2 + 77])
    restored = pickle.loads(pickle.dumps(original))
    assert run(case, restored, items[N // 2 + 77 :]) == run(case, original, items[N // 2 + 77 :])
    assert restored.drifts == original.drifts and restored.n_seen == original.n_seen


@pytest.mark.parametrize("name", CASES)
def test_input_is_not_mutated(name: str) -> None:
    case = CASES[name]
    items = stream(case, wide=True) + stream(case)
    before = copy.deepcopy(items)
    run(case, case.build(), items)
    assert items == before


@pytest.mark.parametrize("name", CASES)
def test_memory_stays_bounded_on_high_cardinality_input(name: str) -> None:
    case = CASES[name]
    monitor = case.build()
    items = stream(case, n=3 * N, wide=True)
    sizes = []
    for part in range(3):
        run(case, monitor, items[part * N : (part + 1) * N])
        sizes.append(len(pickle.dumps(monitor)))
    # Three times the input, unbounded names and all: the state does not grow with it.
    assert sizes[2] <= sizes[0] * 1.25 + 4096, sizes
    assert sizes[2] < 400_000, sizes


@pytest.mark.parametrize("name", CASES)
def test_clone_has_equal_params_and_no_state(name: str) -> None:
    case = CASES[name]
    items = stream(case)
    trained = case.build()
    run(case, trained, items)
    clone = trained.clone()
    assert type(clone) is type(trained)
    assert clone.params() == trained.params() == case.build().params()
    assert clone.n_seen == 0 and clone.drifts == 0 and clone.last_drift is None
    assert run(case, clone, items) == run(case, case.build(), items)
