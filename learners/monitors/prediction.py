"""Prediction drift: the distribution of served predictions and scores, per learner and model version."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from learners.monitors.base import DriftSignal, Monitor
from learners.monitors.features import CategoricalDriftDetector, NumericDriftDetector

__all__ = ["PredictionDriftMonitor"]

_NO_SIGNALS: tuple[DriftSignal, ...] = ()


class PredictionDriftMonitor(Monitor):
    """One label detector and one score detector per model version; a new version starts its own reference.

    Only the ``max_versions`` most recently served versions are kept, so a long rollout history stays bounded.

    >>> monitor = PredictionDriftMonitor(window=200)
    >>> [s for i in range(600) for s in monitor.update(i % 4 == 0, 0.9 if i % 4 else 0.6, "v1")]
    []
    >>> fired = [s for i in range(200) for s in monitor.update(i % 2 == 0, 0.55, "v1")]
    >>> sorted((s.feature, s.model_version, s.n_seen) for s in fired)
    [('prediction', 'v1', 800), ('score', 'v1', 800)]
    """

    def __init__(self, window: int = 500, bins: int = 10, threshold: float = 0.25, max_versions: int = 4) -> None:
        self.window = window
        self.bins = bins
        self.threshold = threshold
        self.max_versions = max_versions
        self._versions: dict[str, tuple[CategoricalDriftDetector, NumericDriftDetector]] = {}
        self._n_seen = 0
        self._drifts = 0
        self._last_drift: DriftSignal | None = None

    @property
    def n_seen(self) -> int:
        return self._n_seen

    @property
    def drifts(self) -> int:
        return self._drifts

    @property
    def last_drift(self) -> DriftSignal | None:
        return self._last_drift

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(self._versions)

    def update(
        self, prediction: Any, score: float | None = None, model_version: str | None = None
    ) -> tuple[DriftSignal, ...]:
        """Feed one served prediction, its score (top-class probability, or a regression output) and version."""
        self._n_seen += 1
        version = model_version or ""
        pair = self._versions.get(version)
        if pair is None:
            if len(self._versions) >= self.max_versions:
                del self._versions[next(iter(self._versions))]
            pair = (
                CategoricalDriftDetector(window=self.window, threshold=self.threshold, feature="prediction"),
                NumericDriftDetector(window=self.window, bins=self.bins, threshold=self.threshold, feature="score"),
            )
            self._versions[version] = pair
        labels, scores = pair
        signals = labels.update(prediction) if prediction is not None else _NO_SIGNALS
        if score is not None:
            signals += scores.update(score)
        if not signals:
            return _NO_SIGNALS
        signals = tuple(
            replace(s, kind="prediction", n_seen=self._n_seen, model_version=model_version) for s in signals
        )
        self._drifts += len(signals)
        self._last_drift = signals[-1]
        return signals
