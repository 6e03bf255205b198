"""One online learner: a River pipeline scored prequentially and watched for drift."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from river import base

from learners.config import LearnerSpec
from learners.drift import AdwinMonitor, DriftInfo
from learners.labels import LabelValue, Target
from learners.metrics import PrequentialMetrics
from learners.models import FeatureValue, build_model, supports_weight

__all__ = ["LearnOutcome", "OnlineLearner"]


@dataclass(frozen=True, slots=True)
class LearnOutcome:
    """What happened to one event: the prediction made before learning it, its error, any drift.

    >>> LearnOutcome(prediction=True, proba={False: 0.2, True: 0.8}, error=0.0, drift=None, n_seen=1).error
    0.0
    """

    prediction: Any
    proba: dict[Any, float] | None
    error: float
    drift: DriftInfo | None
    n_seen: int


class OnlineLearner:
    """Test-then-train on every event: predict, score, watch the error for drift, then learn.

    The per-event error fed to ADWIN is the misclassification (0.0/1.0) for classifiers and the
    absolute error for regressors. A classifier that has seen no class yet predicts ``None``,
    which counts as an error. Sample weights reach the estimator as ``w=`` where it honours one
    (logistic/linear regression, Hoeffding adaptive trees) and are ignored otherwise (see
    ``learners.models.supports_weight``). Input dicts are never mutated.

    >>> from learners.config import LearnerSpec
    >>> learner = OnlineLearner("demo", LearnerSpec())
    >>> for i in range(200):
    ...     outcome = learner.learn_one({"x": float(i % 10)}, Target(y=i % 10 >= 5, weight=1.0))
    >>> learner.n_seen, learner.predict_one({"x": 9.0}), learner.predict_one({"x": 0.0})
    (200, True, False)
    >>> learner.metrics["accuracy"] > 0.9
    True
    """

    def __init__(self, name: str, spec: LearnerSpec) -> None:
        self._name = name
        self._spec = spec
        self._model = build_model(spec)
        self._classifier = spec.task != "regression"
        # Every classifier River gives us derives predict_one from predict_proba_one; when that
        # holds we call the model once per event instead of twice.
        estimator = self._model[list(self._model.steps)[-1]]
        self._derive_prediction = self._classifier and type(estimator).predict_one is base.Classifier.predict_one
        self._weighted = supports_weight(spec.task, spec.model)
        self._metrics = PrequentialMetrics(spec.task, spec.rolling_window)
        error_name = "misclassification" if self._classifier else "absolute_error"
        drift = spec.drift
        self._monitor = AdwinMonitor(
            drift.delta, drift.cooldown, drift.grace, metric=error_name, direction=drift.direction
        )
        self._n_seen = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def spec(self) -> LearnerSpec:
        return self._spec

    @property
    def n_seen(self) -> int:
        """Events learned so far."""
        return self._n_seen

    @property
    def metrics(self) -> dict[str, float]:
        return self._metrics.as_dict()

    @property
    def drifts(self) -> int:
        return self._monitor.drifts

    @property
    def last_drift(self) -> DriftInfo | None:
        return self._monitor.last_drift

    def learn_one(self, x: Mapping[str, FeatureValue], target: Target) -> LearnOutcome:
        """Predict ``x``, score the prediction against ``target``, feed ADWIN, then learn."""
        model = self._model
        features: dict[str, Any] = x if isinstance(x, dict) else dict(x)
        y = target.y
        proba: dict[Any, float] | None
        if self._classifier:
            raw = model.predict_proba_one(features)
            proba = raw if type(raw) is dict else (dict(raw) if raw is not None else None)
            if self._derive_prediction:
                prediction = max(raw, key=raw.get) if raw else None
            else:
                prediction = model.predict_one(features)
            error = float(prediction != y)
            self._metrics.update(y, prediction, proba)
        else:
            proba = None
            raw_prediction = model.predict_one(features)
            prediction = 0.0 if raw_prediction is None else float(raw_prediction)
            error = abs(float(y) - prediction)
            self._metrics.update(y, prediction)
        drift = self._monitor.update(error)
        if self._weighted and target.weight != 1.0:
            model.learn_one(features, y, w=target.weight)
        else:
            model.learn_one(features, y)
        self._n_seen += 1
        return LearnOutcome(prediction=prediction, proba=proba, error=error, drift=drift, n_seen=self._n_seen)

    def predict_one(self, x: Mapping[str, FeatureValue]) -> LabelValue | None:
        """The current prediction for ``x``; ``None`` from a classifier that has seen no class."""
        prediction = self._model.predict_one(x if isinstance(x, dict) else dict(x))
        return prediction  # type: ignore[no-any-return]

    @property
    def proba_scorer(self) -> Callable[[dict[str, FeatureValue]], dict[Any, float]] | None:
        """The model's own ``predict_proba_one`` when the prediction is its argmax, for serving.

        That holds for every classifier River gives us; ``None`` for a regressor or a classifier
        with a ``predict_one`` of its own (use :meth:`predict_with_proba`). Serving calls it
        directly: a prediction then costs River's call and little else.
        """
        return self._model.predict_proba_one if self._derive_prediction else None

    def predict_with_proba(self, x: dict[str, FeatureValue]) -> tuple[Any, dict[Any, float] | None]:
        """The prediction for ``x`` and, from a classifier, the class probabilities it comes from.

        What serving calls: one model call per classification (as in :meth:`learn_one`), the
        probabilities River returns handed out as they are (a new dict per call), and a
        regression value as a float (``0.0`` from a regressor that has learned nothing).

        >>> from learners.config import LearnerSpec
        >>> learner = OnlineLearner("demo", LearnerSpec())
        >>> for i in range(200):
        ...     _ = learner.learn_one({"x": float(i % 10)}, Target(y=i % 10 >= 5, weight=1.0))
        >>> label, proba = learner.predict_with_proba({"x": 9.0})
        >>> label, proba[True] > 0.5, sorted(proba)
        (True, True, [False, True])
        """
        model = self._model
        if self._classifier:
            raw = model.predict_proba_one(x)
            proba = raw if type(raw) is dict else dict(raw)
            if self._derive_prediction:
                return (max(proba, key=proba.__getitem__) if proba else None), proba
            return model.predict_one(x), proba
        value = model.predict_one(x)
        return (0.0 if value is None else float(value)), None

    def predict_proba_one(self, x: Mapping[str, FeatureValue]) -> dict[Any, float] | None:
        """Class probabilities for ``x``; ``None`` for a regression learner."""
        if not self._classifier:
            return None
        return dict(self._model.predict_proba_one(x if isinstance(x, dict) else dict(x)))

    def clone(self) -> OnlineLearner:
        """A fresh, untrained learner with the same name and spec."""
        return OnlineLearner(self._name, self._spec)

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary for status tools and dashboards."""
        last = self._monitor.last_drift
        return {
            "name": self._name,
            "task": self._spec.task,
            "model": self._spec.model,
            "n_learned": self._n_seen,
            "metrics": self._metrics.as_dict(),
            "drifts": self._monitor.drifts,
            "last_drift": last.to_dict() if last is not None else None,
            "suppressed_drifts": self._monitor.suppressed,
        }

    def __repr__(self) -> str:
        return (
            f"OnlineLearner({self._name!r}, task={self._spec.task}, model={self._spec.model}, "
            f"n_seen={self._n_seen}, drifts={self._monitor.drifts})"
        )
