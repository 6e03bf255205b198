"""PrequentialMetrics reports exactly what River's metric classes report."""

from __future__ import annotations

import random

import pytest
from river import metrics, utils

from learners.metrics import PrequentialMetrics


def binary_stream(n: int = 3000, seed: int = 1) -> list[tuple[bool, bool | None, dict[bool, float]]]:
    rng = random.Random(seed)
    out: list[tuple[bool, bool | None, dict[bool, float]]] = []
    for i in range(n):
        y = rng.random() < 0.4
        p = rng.random()
        proba = {False: 1 - p, True: p}
        out.append((y, None if i < 3 else p >= 0.5, proba if i >= 3 else {}))
    return out


def test_binary_metrics_equal_rivers() -> None:
    window = 250
    reference = {
        "accuracy": metrics.Accuracy(),
        "f1": metrics.F1(),
        "rolling_accuracy": utils.Rolling(metrics.Accuracy, window_size=window),
        "rolling_f1": utils.Rolling(metrics.F1, window_size=window),
    }
    log_loss = metrics.LogLoss()
    prequential = PrequentialMetrics("binary", rolling_window=window)
    for y, y_pred, proba in binary_stream():
        for metric in reference.values():
            metric.update(y, y_pred)
        log_loss.update(y, proba)
        prequential.update(y, y_pred, proba)
    expected = {name: metric.get() for name, metric in reference.items()} | {"log_loss": log_loss.get()}
    assert prequential.as_dict() == expected
    assert prequential.n == 3000


def test_multiclass_metrics_equal_rivers() -> None:
    rng = random.Random(2)
    classes = ["cat", "dog", "bird"]
    accuracy, macro_f1, cross_entropy = metrics.Accuracy(), metrics.MacroF1(), metrics.CrossEntropy()
    rolling = utils.Rolling(metrics.MacroF1, window_size=100)
    prequential = PrequentialMetrics("multiclass", rolling_window=100)
    for i in range(1000):
        y = rng.choice(classes)
        weights = [rng.random() for _ in classes]
        proba = {c: w / sum(weights) for c, w in zip(classes, weights, strict=True)}
        y_pred: str | None = max(proba, key=proba.__getitem__)
        if i < 3:  # a model that has seen no class yet
            y_pred, proba = None, {}
        for metric in (accuracy, macro_f1, rolling):
            metric.update(y, y_pred)
        cross_entropy.update(y, proba)
        prequential.update(y, y_pred, proba)
    got = prequential.as_dict()
    assert (got["accuracy"], got["f1"], got["log_loss"], got["rolling_f1"]) == (
        accuracy.get(), macro_f1.get(), cross_entropy.get(), rolling.get(),
    )  # fmt: skip


def test_regression_metrics_equal_rivers() -> None:
    rng = random.Random(3)
    mae, rmse = metrics.MAE(), metrics.RMSE()
    rolling_mae, rolling_rmse = utils.Rolling(metrics.MAE, window_size=50), utils.Rolling(metrics.RMSE, window_size=50)
    prequential = PrequentialMetrics("regression", rolling_window=50)
    for _ in range(500):
        y, y_pred = rng.gauss(0, 1), rng.gauss(0, 1)
        for metric in (mae, rmse, rolling_mae, rolling_rmse):
            metric.update(y, y_pred)
        prequential.update(y, y_pred)
    assert prequential.as_dict() == {
        "mae": mae.get(), "rmse": rmse.get(), "rolling_mae": rolling_mae.get(), "rolling_rmse": rolling_rmse.get(),
    }  # fmt: skip


def test_missing_probabilities_score_like_an_empty_dict() -> None:
    prequential = PrequentialMetrics("binary", rolling_window=10)
    prequential.update(True, None, None)
    log_loss = metrics.LogLoss()
    log_loss.update(True, {})
    assert prequential.as_dict()["log_loss"] == log_loss.get()
    assert prequential.as_dict()["accuracy"] == 0.0


def test_unknown_task_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        PrequentialMetrics("ranking", rolling_window=10)
