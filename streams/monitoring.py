"""The feedback processor's hook for the monitors that see drift before labels arrive.

Every learner that configures none of ``input_drift``, ``prediction_drift`` and
``performance_estimate`` never reaches this module: the processor checks once per event.
"""

from __future__ import annotations

from typing import Any

from learners.config import LearnersConfig, LearnerSpec
from learners.monitors.served import ServedMonitors
from learners.online import OnlineLearner
from learners.retrain_policy import RetrainGate
from schemas import Envelope, PredictionEvent
from schemas.errors import UnknownLearner
from streams.derived import monitor_drift_event, retrain_request

__all__ = ["ServedWatch", "watch_learned", "watches_served"]


def watches_served(spec: LearnerSpec) -> bool:
    return spec.prediction_drift is not None or spec.performance_estimate is not None


def _served_for(spec: LearnerSpec) -> ServedMonitors:
    return ServedMonitors(
        spec.prediction_drift.build() if spec.prediction_drift is not None else None,
        spec.performance_estimate.build() if spec.performance_estimate is not None and spec.task != "regression"
        else None,
    )  # fmt: skip


class ServedWatch:
    """Each watched learner's served-prediction monitors, fed from the predictions topic.

    The monitors of a learner are shared with its slot in the partition state, so they are
    snapshotted with it and a restarted worker adopts them from the restored slot.
    """

    def __init__(self, learners: LearnersConfig, source: str) -> None:
        self.learners = learners
        self.source = source
        self.any = any(watches_served(spec) for spec in learners.learners.values())
        self._monitors: dict[str, ServedMonitors] = {}

    def prediction(self, ev: PredictionEvent) -> list[Envelope]:
        """A served prediction: its drift events, if it completed a window that moved."""
        monitors = self._monitors.get(ev.learner)
        if monitors is None:
            try:
                spec = self.learners.resolve(ev.learner)
            except UnknownLearner:  # undeclared under strict: nothing learns it, nothing to watch
                return []
            if not watches_served(spec):
                return []
            monitors = self._monitors[ev.learner] = _served_for(spec)
        signals = monitors.served(ev.prediction_id, ev.prediction, ev.probability, ev.model_version)
        return [monitor_drift_event(ev.learner, s, source=self.source) for s in signals]

    def adopt(self, name: str, slot_monitors: ServedMonitors | None, spec: LearnerSpec) -> ServedMonitors | None:
        """The monitors the slot of ``name`` should hold: the live ones, else the ones it was restored with."""
        live = self._monitors.get(name)
        if live is None and slot_monitors is not None:
            live = self._monitors[name] = slot_monitors
        if live is None and watches_served(spec):
            live = self._monitors[name] = _served_for(spec)
        return live


def watch_learned(
    learner: OnlineLearner,
    inputs: Any,
    served: ServedMonitors | None,
    features: dict[str, Any],
    prediction_id: str | None,
    label: Any,
    gate: RetrainGate | None,
    now: float,
    source: str,
) -> list[Envelope]:
    """A learned event: its inputs go to the input monitor, its label to the estimate of its served prediction."""
    out: list[Envelope] = []
    if served is not None and prediction_id is not None:
        served.labelled(prediction_id, label)
    if inputs is None:
        return out
    for signal in inputs.update(features):
        drift = monitor_drift_event(learner.name, signal, source=source)
        out.append(drift)
        if gate is not None and gate.on_drift(signal.kind, n_seen=signal.n_seen, now=now) is not None:
            out.append(
                retrain_request(
                    learner, "drift", learner.n_seen, source=source, drift_event_id=drift.event_id, kind=signal.kind
                )
            )
    return out
