"""Input drift for one learner: a detector per monitored feature, at most ``max_features`` of them.

Which features are monitored: the ones the learners file names, else the top ``max_features`` by
volume. Volume is counted on one event in ``_VOLUME_SAMPLE`` with a Misra-Gries summary, so sparse,
high-cardinality inputs cost a bounded dictionary and the per-event work stays one detector update
per monitored feature present in the event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from learners.models import TEXT_FEATURE
from learners.monitors.base import DriftSignal, Monitor
from learners.monitors.features import CategoricalDriftDetector, NumericDriftDetector, TextDriftDetector

__all__ = ["InputDriftMonitor"]

_VOLUME_SAMPLE = 16
_NO_SIGNALS: tuple[DriftSignal, ...] = ()

Detector = NumericDriftDetector | CategoricalDriftDetector | TextDriftDetector


class InputDriftMonitor(Monitor):
    """Watches a learner's feature values; ``update(x)`` returns the drifts that event completed.

    >>> import random
    >>> rng = random.Random(3)
    >>> monitor = InputDriftMonitor(window=500, max_features=2)
    >>> stream = [{"a": rng.gauss(0, 1), "b": rng.random(), "rare": 1.0} for _ in range(3000)]
    >>> [s for x in stream for s in monitor.update(x)]
    []
    >>> sorted(monitor.monitored)
    ['a', 'b']
    >>> fired = [s for _ in range(1000) for s in monitor.update({"a": rng.gauss(2, 1), "b": rng.random()})]
    >>> [(s.feature, s.n_seen) for s in fired]
    [('a', 3500)]
    """

    def __init__(
        self,
        features: tuple[str, ...] = (),
        max_features: int = 20,
        window: int = 500,
        bins: int = 10,
        threshold: float = 0.25,
        max_categories: int = 20,
        text: bool = True,
        vocab_size: int = 5000,
        oov_threshold: float = 0.1,
        reselect_every: int = 5000,
    ) -> None:
        if max_features < 1:
            raise ValueError("max_features must be at least 1")
        self.features = tuple(features)
        self.max_features = max_features
        self.window = window
        self.bins = bins
        self.threshold = threshold
        self.max_categories = max_categories
        self.text = text
        self.vocab_size = vocab_size
        self.oov_threshold = oov_threshold
        self.reselect_every = reselect_every
        self._explicit = frozenset(features[:max_features])
        self._detectors: dict[str, Detector] = {}
        self._volume: dict[str, int] = {}
        self._top: frozenset[str] | None = None  # the heaviest features at the last reselection
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
    def monitored(self) -> tuple[str, ...]:
        """The features that have a detector now."""
        return tuple(self._detectors)

    def update(self, x: Mapping[str, Any]) -> tuple[DriftSignal, ...]:
        """Feed one event's features (not modified)."""
        self._n_seen += 1
        detectors = self._detectors
        count_volume = not self._explicit and self._n_seen % _VOLUME_SAMPLE == 0
        signals = _NO_SIGNALS
        for name, value in x.items():
            if count_volume:
                self._count(name)
            detector = detectors.get(name)
            if detector is None:
                detector = self._admit(name, value)
                if detector is None:
                    continue
            fired = detector.update(value)
            if fired:
                signals += fired
        if not self._explicit and self._n_seen % self.reselect_every == 0:
            self._reselect()
        if signals:
            # Report positions in the learner's stream, not in the feature's own.
            signals = tuple(replace(s, n_seen=self._n_seen) for s in signals)
            self._drifts += len(signals)
            self._last_drift = signals[-1]
        return signals

    def _admit(self, name: str, value: Any) -> Detector | None:
        if len(self._detectors) >= self.max_features:
            return None
        if self._explicit and name not in self._explicit:
            return None
        if self._top is not None and name not in self._top:
            return None
        detector = self._detector_for(name, value)
        if detector is not None:
            self._detectors[name] = detector
        return detector

    def _detector_for(self, name: str, value: Any) -> Detector | None:
        if name == TEXT_FEATURE:
            if not self.text:
                return None
            return TextDriftDetector(
                window=self.window,
                bins=self.bins,
                threshold=self.threshold,
                vocab_size=self.vocab_size,
                oov_threshold=self.oov_threshold,
                feature=name,
            )
        if type(value) is bool or isinstance(value, str):
            return CategoricalDriftDetector(
                window=self.window, threshold=self.threshold, max_categories=self.max_categories, feature=name
            )
        if isinstance(value, (int, float)):
            return NumericDriftDetector(window=self.window, bins=self.bins, threshold=self.threshold, feature=name)
        return None

    def _count(self, name: str) -> None:
        volume = self._volume
        volume[name] = volume.get(name, 0) + 1
        if len(volume) > 4 * self.max_features:
            # Misra-Gries: the heavy hitters survive, the dictionary stays bounded.
            floor = min(volume.values())
            self._volume = {key: count - floor for key, count in volume.items() if count > floor}

    def _reselect(self) -> None:
        """Swap detectors of features that fell out of the top ``max_features`` for the new heavy ones."""
        volume = self._volume
        top = frozenset(sorted(volume, key=volume.__getitem__, reverse=True)[: self.max_features])
        if len(top) < self.max_features:
            return  # room for everyone seen: nothing to swap
        for name in [name for name in self._detectors if name not in top]:
            del self._detectors[name]
        # Newly admitted features get their detector on their next value.
        self._top = top
