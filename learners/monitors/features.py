"""Detectors for one input feature: numeric values, categories, and text.

Each compares a tumbling window of ``window`` values with a reference window and reports a drift
when the population stability index (PSI) between them exceeds ``threshold``. The first window is
the reference; after an accepted drift the window that moved becomes the new reference, so one
lasting change is reported once. Per value a detector only appends to a bounded buffer; the
comparison runs once per window.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np

from learners.monitors.base import DriftSignal, Monitor, psi

__all__ = ["CategoricalDriftDetector", "NumericDriftDetector", "TextDriftDetector"]

_OTHER = "\x00other"
_NO_SIGNALS: tuple[DriftSignal, ...] = ()
_TOKEN = re.compile(r"\w+")


class NumericDriftDetector(Monitor):
    """PSI over quantile bins of the reference window.

    >>> import random
    >>> rng = random.Random(1)
    >>> det = NumericDriftDetector(window=500, feature="age")
    >>> fired = [s for _ in range(2000) for s in det.update(rng.gauss(0, 1))]
    >>> fired
    []
    >>> fired = [s for _ in range(1000) for s in det.update(rng.gauss(1.5, 1))]
    >>> [(s.feature, s.n_seen, s.before["mean"] < 0.2 < 1.2 < s.after["mean"]) for s in fired]
    [('age', 2500, True)]
    """

    detector = "psi"

    def __init__(self, window: int = 500, bins: int = 10, threshold: float = 0.25, feature: str | None = None) -> None:
        if window < 2 * bins:
            raise ValueError(f"window ({window}) must hold at least two values per bin ({bins} bins)")
        self.window = window
        self.bins = bins
        self.threshold = threshold
        self.feature = feature
        self._buffer: list[float] = []
        self._edges: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self._reference_counts: list[int] = []
        self._reference_stats: dict[str, float] = {}
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

    def update(self, value: Any) -> tuple[DriftSignal, ...]:
        """Feed one value; non-numeric and non-finite values are ignored."""
        if type(value) is bool or not isinstance(value, (int, float)) or not math.isfinite(value):
            return _NO_SIGNALS
        self._n_seen += 1
        buffer = self._buffer
        buffer.append(float(value))
        if len(buffer) < self.window:
            return _NO_SIGNALS
        return self._close()

    def _close(self) -> tuple[DriftSignal, ...]:
        values = np.asarray(self._buffer, dtype=np.float64)
        self._buffer = []
        if self._edges is None:
            self._set_reference(values)
            return _NO_SIGNALS
        counts = np.bincount(np.searchsorted(self._edges, values, side="right"), minlength=len(self._edges) + 1)
        statistic = psi(self._reference_counts, counts.tolist())
        if statistic <= self.threshold:
            return _NO_SIGNALS
        signal = DriftSignal(
            detector=self.detector,
            kind="input",
            feature=self.feature,
            n_seen=self._n_seen,
            statistic=statistic,
            threshold=self.threshold,
            before=dict(self._reference_stats),
            after=_stats(values),
        )
        self._set_reference(values)
        self._drifts += 1
        self._last_drift = signal
        return (signal,)

    def _set_reference(self, values: np.ndarray[Any, np.dtype[np.float64]]) -> None:
        quantiles = np.linspace(0, 1, self.bins + 1)[1:-1]
        self._edges = np.unique(np.quantile(values, quantiles))
        counts = np.bincount(np.searchsorted(self._edges, values, side="right"), minlength=len(self._edges) + 1)
        self._reference_counts = counts.tolist()
        self._reference_stats = _stats(values)


def _stats(values: np.ndarray[Any, np.dtype[np.float64]]) -> dict[str, float]:
    return {
        "n": float(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p50": float(np.median(values)),
    }


class CategoricalDriftDetector(Monitor):
    """PSI over category shares; categories beyond the reference's top ``max_categories`` pool as one.

    >>> det = CategoricalDriftDetector(window=100, feature="plan")
    >>> fired = [s for i in range(300) for s in det.update(("free", "pro")[i % 2])]
    >>> fired = fired + [s for i in range(100) for s in det.update(("free", "pro", "pro", "team")[i % 4])]
    >>> [(s.feature, s.n_seen, s.before["share:free"], s.after["share:free"]) for s in fired]
    [('plan', 400, 0.5, 0.25)]
    """

    detector = "psi"

    def __init__(
        self, window: int = 500, threshold: float = 0.25, max_categories: int = 20, feature: str | None = None
    ) -> None:
        if max_categories < 1:
            raise ValueError("max_categories must be at least 1")
        self.window = window
        self.threshold = threshold
        self.max_categories = max_categories
        self.feature = feature
        self._buffer: list[str] = []
        self._categories: dict[str, int] | None = None  # category -> bin; the rest share the last bin
        self._reference_counts: list[int] = []
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

    def update(self, value: Any) -> tuple[DriftSignal, ...]:
        """Feed one category (any hashable scalar; it is compared by its text)."""
        if value is None:
            return _NO_SIGNALS
        self._n_seen += 1
        buffer = self._buffer
        buffer.append(value if type(value) is str else str(value))
        if len(buffer) < self.window:
            return _NO_SIGNALS
        return self._close()

    def _close(self) -> tuple[DriftSignal, ...]:
        counts = Counter(self._buffer)
        self._buffer = []
        if self._categories is None:
            self._set_reference(counts)
            return _NO_SIGNALS
        binned = self._binned(counts)
        statistic = psi(self._reference_counts, binned)
        if statistic <= self.threshold:
            return _NO_SIGNALS
        before, after = self._shares(self._reference_counts), self._shares(binned)
        # The category whose share moved most says what changed; the rest is in the PSI.
        moved = max(before, key=lambda k: abs(after[k] - before[k]))
        ref_total, total = sum(self._reference_counts), sum(binned)
        signal = DriftSignal(
            detector=self.detector,
            kind="input",
            feature=self.feature,
            n_seen=self._n_seen,
            statistic=statistic,
            threshold=self.threshold,
            before={"n": float(ref_total), f"share:{moved}": before[moved]},
            after={"n": float(total), f"share:{moved}": after[moved]},
        )
        self._set_reference(counts)
        self._drifts += 1
        self._last_drift = signal
        return (signal,)

    def _set_reference(self, counts: Counter[str]) -> None:
        top = [name for name, _ in counts.most_common(self.max_categories)]
        self._categories = {name: i for i, name in enumerate(top)}
        self._reference_counts = self._binned(counts)

    def _binned(self, counts: Counter[str]) -> list[int]:
        categories = self._categories or {}
        out = [0] * (len(categories) + 1)
        for name, count in counts.items():
            out[categories.get(name, len(categories))] += count
        return out

    def _shares(self, binned: list[int]) -> dict[str, float]:
        total = sum(binned) or 1
        names = [*(self._categories or {}), _OTHER]
        return {("other" if name == _OTHER else name): count / total for name, count in zip(names, binned, strict=True)}


class TextDriftDetector(Monitor):
    """Text length (PSI, in tokens) and the out-of-vocabulary rate against the reference's vocabulary.

    The vocabulary is the reference window's ``vocab_size`` most frequent tokens; an OOV drift is a
    rise of the window's OOV rate by more than ``oov_threshold`` over the reference's own rate.

    >>> det = TextDriftDetector(window=100, feature="__text__")
    >>> fired = [s for i in range(200) for s in det.update(f"thanks for the answer {i % 3}")]
    >>> fired = fired + [s for i in range(100) for s in det.update(f"erreur fatale du numero {i}")]
    >>> [(s.detector, s.n_seen, s.before["oov_rate"], s.after["oov_rate"]) for s in fired]
    [('oov_rate', 300, 0.0, 0.994)]
    """

    detector = "text"

    def __init__(
        self,
        window: int = 500,
        bins: int = 10,
        threshold: float = 0.25,
        vocab_size: int = 5000,
        oov_threshold: float = 0.1,
        feature: str | None = None,
    ) -> None:
        self.window = window
        self.bins = bins
        self.threshold = threshold
        self.vocab_size = vocab_size
        self.oov_threshold = oov_threshold
        self.feature = feature
        self._length = NumericDriftDetector(window=window, bins=bins, threshold=threshold, feature=feature)
        self._tokens: Counter[str] = Counter()  # this window's tokens, pruned to stay bounded
        self._vocab: frozenset[str] | None = None
        self._reference_oov = 0.0
        self._window_n = 0
        self._window_tokens = 0
        self._window_oov = 0
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

    def update(self, value: Any) -> tuple[DriftSignal, ...]:
        """Feed one text; anything else is ignored."""
        if type(value) is not str:
            return _NO_SIGNALS
        self._n_seen += 1
        tokens = _TOKEN.findall(value.lower())
        signals = tuple(_renamed(s, "text_length") for s in self._length.update(len(tokens)))
        self._tokens.update(tokens)
        if len(self._tokens) > 4 * self.vocab_size:
            self._tokens = Counter(dict(self._tokens.most_common(2 * self.vocab_size)))
        vocab = self._vocab
        if vocab is not None:
            self._window_tokens += len(tokens)
            self._window_oov += sum(1 for token in tokens if token not in vocab)
        self._window_n += 1
        if self._window_n >= self.window:
            signals += self._close_oov()
        if signals:
            self._drifts += len(signals)
            self._last_drift = signals[-1]
        return signals

    def _close_oov(self) -> tuple[DriftSignal, ...]:
        rate = self._window_oov / self._window_tokens if self._window_tokens else 0.0
        signals: tuple[DriftSignal, ...] = _NO_SIGNALS
        if self._vocab is not None and rate - self._reference_oov > self.oov_threshold:
            signals = (
                DriftSignal(
                    detector="oov_rate",
                    kind="input",
                    feature=self.feature,
                    n_seen=self._n_seen,
                    statistic=rate - self._reference_oov,
                    threshold=self.oov_threshold,
                    before={"oov_rate": self._reference_oov},
                    after={"oov_rate": rate, "n": float(self._window_n)},
                ),
            )
        if self._vocab is None or signals:
            self._set_vocabulary()
        self._tokens = Counter()
        self._window_n = self._window_tokens = self._window_oov = 0
        return signals

    def _set_vocabulary(self) -> None:
        top = self._tokens.most_common(self.vocab_size)
        self._vocab = frozenset(token for token, _ in top)
        total = sum(self._tokens.values())
        self._reference_oov = (total - sum(count for _, count in top)) / total if total else 0.0


def _renamed(signal: DriftSignal, detector: str) -> DriftSignal:
    return DriftSignal(
        detector=detector,
        kind=signal.kind,
        feature=signal.feature,
        n_seen=signal.n_seen,
        statistic=signal.statistic,
        threshold=signal.threshold,
        before=signal.before,
        after=signal.after,
    )
