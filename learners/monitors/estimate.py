"""A label-free performance estimate for classifiers (confidence-based, as NannyML's CBPE).

Predictions are grouped in chunks of ``chunk`` in serving order. When a chunk is full, its expected
accuracy (and, for a binary learner, its expected F1) is the sum of the calibrated probability that
each prediction is right, computed before any of its labels arrive. Calibration is a histogram over
the served confidence, learned online from the predictions that did get a label, with
``prior`` pseudo-counts at the raw confidence so an untrained bin trusts the model. When enough of a
chunk's labels have arrived (``min_labelled``), the estimate is checked against the realized accuracy
and the difference is kept as the estimation error.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from learners.monitors.base import DriftSignal, Monitor

__all__ = ["PerformanceEstimator"]

_NO_SIGNALS: tuple[DriftSignal, ...] = ()


@dataclass(slots=True)
class _Chunk:
    index: int
    n: int
    accuracy: float
    f1: float | None
    labelled: int = 0
    correct: int = 0


@dataclass(slots=True)
class _Counts:
    # Per calibration bin: how many predictions of the positive class (other classes), and their confidences' sum.
    positive: list[int] = field(default_factory=list)
    other: list[int] = field(default_factory=list)
    positive_conf: list[float] = field(default_factory=list)
    other_conf: list[float] = field(default_factory=list)


class PerformanceEstimator(Monitor):
    """Expected accuracy/F1 of served predictions whose labels have not arrived; a drop is a drift.

    >>> est = PerformanceEstimator(chunk=100, max_drop=0.05)
    >>> [s for i in range(300) for s in est.observe_prediction(f"p{i}", True, 0.95)]
    []
    >>> fired = [s for i in range(100) for s in est.observe_prediction(f"q{i}", True, 0.6)]
    >>> [(s.kind, s.n_seen, s.before["accuracy"], s.after["accuracy"]) for s in fired]
    [('estimated_performance', 400, 0.95, 0.6)]
    >>> for i in range(100):
    ...     est.observe_label(f"q{i}", correct=i % 2 == 0)
    >>> est.status()["estimation_error"]
    0.1
    """

    def __init__(
        self,
        chunk: int = 500,
        max_drop: float = 0.05,
        calibration_bins: int = 10,
        prior: float = 10.0,
        min_labelled: float = 0.8,
        max_pending: int = 100_000,
        max_open_chunks: int = 64,
    ) -> None:
        self.chunk = chunk
        self.max_drop = max_drop
        self.calibration_bins = calibration_bins
        self.prior = prior
        self.min_labelled = min_labelled
        self.max_pending = max_pending
        self.max_open_chunks = max_open_chunks
        bins = calibration_bins
        self._hits = [0] * bins
        self._totals = [0] * bins
        # prediction id -> (chunk, calibration bin, the predicted label)
        self._pending: OrderedDict[str, tuple[int, int, Any]] = OrderedDict()
        self._counts = self._new_counts()
        self._binary = True
        self._chunk_n = 0
        self._chunk_index = 0
        self._open: OrderedDict[int, _Chunk] = OrderedDict()
        self._reference: _Chunk | None = None
        self._latest: _Chunk | None = None
        self._errors: deque[float] = deque(maxlen=20)
        self._realized: float | None = None
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

    def calibrated(self, confidence: float) -> float:
        """The learned probability that a prediction served with this confidence is right."""
        b = self._bin(confidence)
        return (self._hits[b] + self.prior * confidence) / (self._totals[b] + self.prior)

    def _bin(self, confidence: float) -> int:
        return min(max(int(confidence * self.calibration_bins), 0), self.calibration_bins - 1)

    def _expected_right(self, b: int, n: int, confidence_sum: float) -> float:
        """Sum over ``n`` predictions in bin ``b`` of the calibrated probability each is right."""
        return (n * self._hits[b] + self.prior * confidence_sum) / (self._totals[b] + self.prior)

    def _new_counts(self) -> _Counts:
        bins = self.calibration_bins
        return _Counts([0] * bins, [0] * bins, [0.0] * bins, [0.0] * bins)

    def observe_prediction(self, prediction_id: str, predicted: Any, confidence: float) -> tuple[DriftSignal, ...]:
        """A served prediction and the probability the model gave its predicted class."""
        self._n_seen += 1
        b = self._bin(confidence)
        pending = self._pending
        pending[prediction_id] = (self._chunk_index, b, predicted)
        if len(pending) > self.max_pending:
            pending.popitem(last=False)  # its label is too late to count
        counts = self._counts
        if predicted is True or predicted == 1:
            counts.positive[b] += 1
            counts.positive_conf[b] += confidence
        else:
            counts.other[b] += 1
            counts.other_conf[b] += confidence
            if not (predicted is False or predicted == 0):
                self._binary = False
        self._chunk_n += 1
        if self._chunk_n < self.chunk:
            return _NO_SIGNALS
        return self._close_chunk()

    def observe_label(self, prediction_id: str, *, correct: bool) -> None:
        """The label of an earlier prediction arrived: learn calibration, score the chunk's estimate."""
        entry = self._pending.pop(prediction_id, None)
        if entry is None:
            return
        self._learn_label(entry, correct)

    def observe_truth(self, prediction_id: str, label: Any) -> None:
        """The true label of an earlier prediction arrived; it is right when it equals the served one."""
        entry = self._pending.pop(prediction_id, None)
        if entry is not None:
            self._learn_label(entry, entry[2] == label)

    def _learn_label(self, entry: tuple[int, int, Any], correct: bool) -> None:
        index, b, _ = entry
        self._totals[b] += 1
        self._hits[b] += int(correct)
        chunk = self._open.get(index)
        if chunk is None:
            return
        chunk.labelled += 1
        chunk.correct += int(correct)
        if chunk.labelled >= self.min_labelled * chunk.n:
            realized = chunk.correct / chunk.labelled
            self._realized = realized
            self._errors.append(chunk.accuracy - realized)
            del self._open[index]

    def _close_chunk(self) -> tuple[DriftSignal, ...]:
        tp = fp = tn = fn = 0.0
        counts = self._counts
        for b in range(self.calibration_bins):
            right = self._expected_right(b, counts.positive[b], counts.positive_conf[b])
            tp += right
            fp += counts.positive[b] - right
            right = self._expected_right(b, counts.other[b], counts.other_conf[b])
            tn += right
            fn += counts.other[b] - right
        n = self._chunk_n
        f1 = 2 * tp / (2 * tp + fp + fn) if self._binary and tp + fp + fn > 0 else None
        chunk = _Chunk(index=self._chunk_index, n=n, accuracy=round((tp + tn) / n, 12), f1=f1)
        self._open[chunk.index] = chunk
        if len(self._open) > self.max_open_chunks:
            self._open.popitem(last=False)
        self._chunk_index += 1
        self._chunk_n = 0
        self._counts = self._new_counts()
        self._latest = chunk
        reference = self._reference
        if reference is None:
            self._reference = chunk
            return _NO_SIGNALS
        drop = reference.accuracy - chunk.accuracy
        if drop <= self.max_drop:
            return _NO_SIGNALS
        signal = DriftSignal(
            detector="cbpe",
            kind="estimated_performance",
            feature=None,
            n_seen=self._n_seen,
            statistic=round(drop, 12),
            threshold=self.max_drop,
            before=_summary(reference),
            after=_summary(chunk),
        )
        self._reference = chunk
        self._drifts += 1
        self._last_drift = signal
        return (signal,)

    def status(self) -> dict[str, Any]:
        """Estimate, realized accuracy and estimation error, JSON-ready."""
        latest = self._latest
        errors = list(self._errors)
        return {
            "estimated_accuracy": latest.accuracy if latest else None,
            "estimated_f1": latest.f1 if latest else None,
            "realized_accuracy": self._realized,
            "estimation_error": round(sum(abs(e) for e in errors) / len(errors), 12) if errors else None,
            "pending": len(self._pending),
            "chunks": self._chunk_index,
        }


def _summary(chunk: _Chunk) -> dict[str, float]:
    out = {"n": float(chunk.n), "accuracy": chunk.accuracy}
    if chunk.f1 is not None:
        out["f1"] = chunk.f1
    return out
