"""Prequential (test-then-train) metrics, computed by River's own metric classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from river import metrics, utils

__all__ = ["PrequentialMetrics"]


class PrequentialMetrics:
    """Cumulative and rolling metrics of one learner's predictions.

    Classification: ``accuracy``, ``f1`` (binary: F1 of the positive class ``True``;
    multiclass: macro F1), ``log_loss`` (binary LogLoss on the probability of ``True``;
    multiclass cross-entropy), ``rolling_accuracy``, ``rolling_f1``.
    Regression: ``mae``, ``rmse``, ``rolling_mae``, ``rolling_rmse``.

    >>> m = PrequentialMetrics("binary", rolling_window=2)
    >>> m.update(True, True, {True: 0.8, False: 0.2})
    >>> m.update(False, True, {True: 0.6, False: 0.4})
    >>> m.update(False, False, {True: 0.3, False: 0.7})
    >>> m.n, round(m.as_dict()["accuracy"], 3), m.as_dict()["rolling_accuracy"]
    (3, 0.667, 0.5)
    """

    def __init__(self, task: str, rolling_window: int) -> None:
        self.task = task
        self.rolling_window = rolling_window
        self._n = 0
        self._readers: dict[str, Any]  # name -> River metric whose get() is reported
        self._label_fed: list[Any]  # updated with (y_true, y_pred)
        self._proba_fed: list[Any]  # updated with (y_true, class probabilities)
        if task == "regression":
            self._readers = {
                "mae": metrics.MAE(),  # type: ignore[no-untyped-call]
                "rmse": metrics.RMSE(),  # type: ignore[no-untyped-call]
                "rolling_mae": utils.Rolling(metrics.MAE, window_size=rolling_window),
                "rolling_rmse": utils.Rolling(metrics.RMSE, window_size=rolling_window),
            }
            self._label_fed = list(self._readers.values())
            self._proba_fed = []
        elif task in ("binary", "multiclass"):
            # Accuracy and F1 read one shared confusion matrix (River's `cm=` argument), so each
            # event updates one matrix, plus one rolling matrix, instead of four metrics. For F1
            # of the class True this is exact: its counts are the True row and column either way.
            f1: Any = metrics.F1 if task == "binary" else metrics.MacroF1
            log_loss_class: Any = metrics.LogLoss if task == "binary" else metrics.CrossEntropy
            log_loss = log_loss_class()
            cm = metrics.ConfusionMatrix()  # type: ignore[no-untyped-call]
            rolling_cm = utils.Rolling(metrics.ConfusionMatrix, window_size=rolling_window)
            self._readers = {
                "accuracy": metrics.Accuracy(cm=cm),  # type: ignore[no-untyped-call]
                "f1": f1(cm=cm),
                "log_loss": log_loss,
                "rolling_accuracy": metrics.Accuracy(cm=rolling_cm.obj),  # type: ignore[no-untyped-call]
                "rolling_f1": f1(cm=rolling_cm.obj),
            }
            self._label_fed = [cm, rolling_cm]
            self._proba_fed = [log_loss]
        else:
            raise ValueError(f"unknown task {task!r}")

    @property
    def n(self) -> int:
        """Events scored so far."""
        return self._n

    def update(self, y_true: Any, y_pred: Any, proba: Mapping[Any, float] | None = None) -> None:
        """Score one prediction made before learning ``y_true``.

        ``proba`` is the classifier's class probabilities; a missing one (a model that has
        seen no class yet) is scored as River scores an empty dict.
        """
        for metric in self._label_fed:
            metric.update(y_true, y_pred)
        if self._proba_fed:
            probabilities = proba if proba is not None else {}
            for metric in self._proba_fed:
                metric.update(y_true, probabilities)
        self._n += 1

    def as_dict(self) -> dict[str, float]:
        """Current values by name, as plain floats (JSON-ready)."""
        return {name: float(metric.get()) for name, metric in self._readers.items()}

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={value:.4f}" for name, value in self.as_dict().items())
        return f"PrequentialMetrics({self.task}, n={self._n}, {body})"
