"""What one learner's monitors watch besides its error: its inputs, and its served predictions."""

from __future__ import annotations

from typing import Any

from learners.monitors.base import DriftSignal
from learners.monitors.estimate import PerformanceEstimator
from learners.monitors.inputs import InputDriftMonitor
from learners.monitors.prediction import PredictionDriftMonitor

__all__ = ["ServedMonitors", "monitors_status"]

_NO_SIGNALS: tuple[DriftSignal, ...] = ()


class ServedMonitors:
    """Prediction drift and the label-free estimate of one learner's served predictions.

    >>> served = ServedMonitors(PredictionDriftMonitor(window=100), PerformanceEstimator(chunk=100))
    >>> [s for i in range(200) for s in served.served(f"p{i}", True, 0.9, "v1")]
    []
    >>> for i in range(100):
    ...     served.labelled(f"p{i}", i % 10 != 0)
    >>> served.status()["estimate"]["realized_accuracy"]
    0.9
    """

    def __init__(self, prediction: PredictionDriftMonitor | None, estimate: PerformanceEstimator | None) -> None:
        self.prediction = prediction
        self.estimate = estimate

    def served(
        self, prediction_id: str, prediction: Any, probability: float | None, model_version: str
    ) -> tuple[DriftSignal, ...]:
        """One served prediction; ``probability`` is the one the model gave ``prediction``, if it gave one."""
        signals = _NO_SIGNALS
        if self.prediction is not None:
            signals = self.prediction.update(prediction, probability, model_version)
        if self.estimate is not None and probability is not None and prediction is not None:
            signals += self.estimate.observe_prediction(prediction_id, prediction, probability)
        return signals

    def labelled(self, prediction_id: str, label: Any) -> None:
        """The label of a served prediction arrived (joined feedback)."""
        if self.estimate is not None:
            self.estimate.observe_truth(prediction_id, label)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.prediction is not None:
            out["prediction_drifts"] = self.prediction.drifts
        if self.estimate is not None:
            out["estimate"] = self.estimate.status()
            out["estimate_drifts"] = self.estimate.drifts
        return out


def monitors_status(inputs: InputDriftMonitor | None, served: ServedMonitors | None) -> dict[str, Any]:
    """The JSON-ready figures of a learner's monitors, for its status row."""
    out: dict[str, Any] = served.status() if served is not None else {}
    if inputs is not None:
        last = inputs.last_drift
        out["input_drifts"] = inputs.drifts
        out["input_features"] = sorted(inputs.monitored)
        out["last_input_drift"] = last.to_dict() if last is not None else None
    return out
