"""The evaluation gate: metrics on a held-out split, a significance test, a grade, promote or not.

A candidate becomes champion only when it beats the champion by ``margin`` on the chosen metric
*and* the difference is significant on the same held-out examples (McNemar's test on the
paired per-example correctness). Anything else stays challenger, with a reason a person can read.

Binary tasks report precision, recall and F1 of the positive class: the largest label, i.e.
``True`` for bool labels, ``1`` for 0/1, the last in sort order for strings (``"pos"`` over
``"neg"``). Multiclass tasks report the macro average over every label seen in the truth or the
predictions (a class with no predictions has precision 0, as in scikit-learn's default).

This module imports no torch: a predictor is any callable from texts to ``{label: probability}``
per text, which ``learners.textclf.TextClassifier`` is.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from learners.textclf import TextClassifier

__all__ = [
    "EvalReport",
    "GateDecision",
    "Metric",
    "Predictor",
    "bootstrap_diff",
    "evaluate",
    "first_champion_gate",
    "gate",
    "grade",
    "mcnemar",
    "quantization_effect",
]

Label = bool | int | str
Predictor = Callable[[list[str]], Sequence[Mapping[Any, float]]]
Metric = Literal["f1", "accuracy", "precision", "recall", "log_loss"]

#: Probabilities are clipped to [EPS, 1] before the log, so one confident mistake costs ~34.5, not inf.
EPS = 1e-15
#: Single-example predictions timed for the latency percentiles.
LATENCY_SAMPLES = 100
#: Discordant pairs below which McNemar's test is exact (binomial) rather than chi-square.
EXACT_BELOW = 25
_GRADES = "ABCDF"
_GRADE_FLOORS = (0.9, 0.8, 0.7, 0.6)


@dataclass(frozen=True)
class EvalReport:
    """Metrics of one model on one held-out split, with the per-example record the paired tests need."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    log_loss: float
    latency_p50_ms: float
    latency_p95_ms: float
    predictions: list[Any] = field(repr=False)
    correct: list[bool] = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.correct)

    def metrics(self) -> dict[str, float]:
        """The scalar metrics, e.g. for an MLflow run or a ``ModelUpdate``."""
        names = ("accuracy", "precision", "recall", "f1", "log_loss", "latency_p50_ms", "latency_p95_ms")
        return {name: float(getattr(self, name)) for name in names}


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    alias: Literal["champion", "challenger"]
    reason: str
    p_value: float | None = None
    delta: float | None = None


def evaluate(
    predictor: TextClassifier | Predictor,
    texts: Sequence[str],
    labels: Sequence[Label],
    *,
    latency_samples: int = LATENCY_SAMPLES,
) -> EvalReport:
    """Score ``predictor`` on ``texts``/``labels``; latency is timed per example on up to ``latency_samples`` texts.

    >>> def coin(texts): return [{True: 0.75, False: 0.25} for _ in texts]
    >>> r = evaluate(coin, ["a", "b", "c", "d"], [True, True, True, False])
    >>> r.accuracy, r.precision, r.recall, round(r.f1, 3), round(r.log_loss, 3)
    (0.75, 0.75, 1.0, 0.857, 0.562)
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("nothing to evaluate: the held-out split is empty")
    probas = list(predictor(list(texts)))
    if len(probas) != len(texts):
        raise ValueError(f"the predictor returned {len(probas)} results for {len(texts)} texts")
    predictions = [max(p.items(), key=lambda kv: kv[1])[0] for p in probas]
    correct = [_same(p, y) for p, y in zip(predictions, labels, strict=True)]
    losses = [-math.log(min(max(_prob_of(p, y), EPS), 1.0)) for p, y in zip(probas, labels, strict=True)]
    known = [key for p in probas for key in p]
    precision, recall, f1 = _precision_recall_f1(predictions, list(labels), known)
    latencies = []
    for text in texts[: max(latency_samples, 1)]:
        start = time.perf_counter()
        predictor([text])
        latencies.append((time.perf_counter() - start) * 1000)
    return EvalReport(
        accuracy=sum(correct) / len(correct),
        precision=precision,
        recall=recall,
        f1=f1,
        log_loss=sum(losses) / len(losses),
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p95_ms=float(np.percentile(latencies, 95)),
        predictions=predictions,
        correct=correct,
    )


def grade(report: EvalReport) -> str:
    """A letter from F1 and accuracy, lowered one step when log-loss is above 0.7.

    A: F1 and accuracy both >= 0.9; B: >= 0.8; C: >= 0.7; D: >= 0.6; else F. A log-loss above
    0.7 (worse than a coin's 0.693 on a binary task: confident mistakes) costs one letter.

    >>> r = EvalReport(0.95, 0.9, 0.9, 0.92, 0.2, 1.0, 2.0, [], [])
    >>> grade(r), grade(EvalReport(0.95, 0.9, 0.9, 0.92, 0.9, 1.0, 2.0, [], []))
    ('A', 'B')
    """
    score = min(report.f1, report.accuracy)
    index = next((i for i, floor in enumerate(_GRADE_FLOORS) if score >= floor), len(_GRADE_FLOORS))
    if not report.log_loss <= 0.7:  # NaN counts as bad
        index = min(index + 1, len(_GRADES) - 1)
    return _GRADES[index]


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> tuple[float, float]:
    """McNemar's test on paired correctness: ``(statistic, p_value)``, two-sided.

    With fewer than 25 discordant pairs the exact binomial test is used (statistic = the smaller
    discordant count); otherwise chi-square with continuity correction, 1 degree of freedom.

    >>> mcnemar([True] * 10, [True] * 10)
    (0.0, 1.0)
    >>> stat, p = mcnemar([True] * 10 + [False] * 2, [False] * 10 + [True] * 2)
    >>> stat, round(p, 4)
    (2.0, 0.0386)
    """
    if len(correct_a) != len(correct_b):
        raise ValueError(f"paired tests need the same examples: {len(correct_a)} vs {len(correct_b)} results")
    b = sum(1 for x, y in zip(correct_a, correct_b, strict=True) if x and not y)
    c = sum(1 for x, y in zip(correct_a, correct_b, strict=True) if y and not x)
    if b + c == 0:
        return 0.0, 1.0
    if b + c < EXACT_BELOW:
        return float(min(b, c)), float(stats.binomtest(min(b, c), b + c, 0.5).pvalue)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return float(statistic), float(stats.chi2.sf(statistic, 1))


def bootstrap_diff(
    correct_a: Sequence[bool], correct_b: Sequence[bool], n: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Accuracy of A minus accuracy of B, with a paired percentile bootstrap interval.

    >>> bootstrap_diff([True, True, False, True], [True, False, False, True], n=200)[0]
    0.25
    """
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ValueError("paired bootstrap needs two non-empty result lists over the same examples")
    diffs = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    rng = np.random.default_rng(seed)
    # Resampled in chunks so a large split does not need an n x size index matrix at once.
    means = np.concatenate(
        [diffs[rng.integers(0, diffs.size, (rows, diffs.size))].mean(axis=1) for rows in _chunks(n, 256)]
    )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(diffs.mean()), float(low), float(high)


def gate(
    candidate: EvalReport,
    champion: EvalReport | None,
    *,
    margin: float = 0.01,
    alpha: float = 0.05,
    metric: Metric = "f1",
    labels: Sequence[Label] | None = None,
    online_metric: float | None = None,
) -> GateDecision:
    """Promote ``candidate`` to champion only if it beats ``champion`` by ``margin`` on ``metric``, significantly.

    Both reports must come from the same held-out examples, in the same order. For
    ``log_loss`` lower is better, so the delta is champion minus candidate. With no champion
    the candidate must pass :func:`first_champion_gate` (``labels`` are the held-out truth).

    >>> better = EvalReport(0.9, 0.9, 0.9, 0.9, 0.3, 1, 1, [True] * 90 + [False] * 10, [True] * 90 + [False] * 10)
    >>> gate(better, None, labels=[True] * 80 + [False] * 20).reason
    'no champion yet; beats the majority class (accuracy 0.900 vs 0.800), grade A'
    >>> worse = EvalReport(0.6, 0.6, 0.6, 0.6, 0.6, 1, 1, [], [True] * 60 + [False] * 40)
    >>> d = gate(better, worse)
    >>> d.alias, d.reason
    ('champion', '+0.300 F1 over the champion, significant (McNemar p=1.2e-07)')
    """
    if champion is None:
        return first_champion_gate(candidate, labels or [], online_metric=online_metric, metric=metric)
    if candidate.n != champion.n:
        raise ValueError(f"candidate and champion were scored on different splits ({candidate.n} vs {champion.n})")
    new, old = float(getattr(candidate, metric)), float(getattr(champion, metric))
    delta = old - new if metric == "log_loss" else new - old
    _, p_value = mcnemar(candidate.correct, champion.correct)
    name = metric.upper() if metric == "f1" else metric.replace("_", "-")
    shown = f"{delta:+.3f} {name}"
    if not delta >= margin:
        reason = f"{shown} is below the {margin:g} margin" if delta > 0 else f"{shown}: no better than the champion"
        return GateDecision(False, "challenger", reason, p_value, delta)
    if not p_value < alpha:
        return GateDecision(False, "challenger", f"{shown} but not significant (p={p_value:.2g})", p_value, delta)
    reason = f"{shown} over the champion, significant (McNemar p={p_value:.2g})"
    return GateDecision(True, "champion", reason, p_value, delta)


def first_champion_gate(
    candidate: EvalReport,
    labels: Sequence[Label],
    *,
    online_metric: float | None = None,
    metric: Metric = "f1",
) -> GateDecision:
    """The gate for a model with no champion: beat the baselines, and never with grade D or F.

    A first candidate has nothing to lose to, so it is held to what is free: the majority class
    (a model that says ``True`` to everything must not win by default) and, when an online learner
    feeds the model, that learner's prequential ``metric`` over the same window. Grades D and F
    are never promoted automatically; such a candidate stays ``challenger`` and rolls out against
    the majority-class baseline, if at all.

    >>> allyes = EvalReport(0.693, 0.693, 1.0, 0.819, 0.62, 1, 1, [True] * 10, [True] * 693 + [False] * 307)
    >>> d = first_champion_gate(allyes, [True] * 693 + [False] * 307)
    >>> d.promote, d.reason
    (False, 'no champion yet, but accuracy 0.693 does not beat the majority class (0.693)')
    """
    if not labels:
        return GateDecision(False, "challenger", "no champion yet, and no held-out labels to compare with baselines")
    majority = max(Counter(labels).values()) / len(labels)
    if not candidate.accuracy > majority:
        return GateDecision(False, "challenger", f"no champion yet, but accuracy {candidate.accuracy:.3f} does not "
                            f"beat the majority class ({majority:.3f})")
    if online_metric is not None:
        new = float(getattr(candidate, metric))
        better = new < online_metric if metric == "log_loss" else new > online_metric
        if not better:
            name = metric.upper() if metric == "f1" else metric.replace("_", "-")
            return GateDecision(False, "challenger", f"no champion yet, but {name} {new:.3f} does not beat the online "
                                f"learner's prequential {online_metric:.3f} over the same window")
    letter = grade(candidate)
    if letter in ("D", "F"):
        return GateDecision(False, "challenger", f"no champion yet, but grade {letter} is never promoted automatically")
    reason = f"no champion yet; beats the majority class (accuracy {candidate.accuracy:.3f} vs {majority:.3f})"
    if online_metric is not None:
        reason += f" and the online learner ({online_metric:.3f})"
    return GateDecision(True, "champion", f"{reason}, grade {letter}")


def quantization_effect(float_report: EvalReport, int8_report: EvalReport) -> dict[str, float]:
    """What int8 bought and cost: p50 latency speed-up (x) and accuracy/F1 change, for the run's metrics.

    >>> f = EvalReport(0.9, 0.9, 0.9, 0.9, 0.3, 10.0, 12.0, [], [])
    >>> quantization_effect(f, EvalReport(0.88, 0.9, 0.9, 0.89, 0.3, 5.0, 6.0, [], []))
    {'speedup_p50': 2.0, 'accuracy_change': -0.02, 'f1_change': -0.01}
    """
    return {
        "speedup_p50": round(float_report.latency_p50_ms / max(int8_report.latency_p50_ms, 1e-9), 3),
        "accuracy_change": round(int8_report.accuracy - float_report.accuracy, 6),
        "f1_change": round(int8_report.f1 - float_report.f1, 6),
    }


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a bool label and an int label are different classes here.
    return type(a) is type(b) and bool(a == b)


def _prob_of(proba: Mapping[Any, float], label: Any) -> float:
    return next((float(p) for key, p in proba.items() if _same(key, label)), 0.0)


def _positive(classes: list[Any]) -> Any:
    try:
        return max(classes)
    except TypeError:  # unorderable mix: fall back to the string order fine_tune uses for ids
        return max(classes, key=str)


def _distinct(values: Sequence[Any]) -> list[Any]:
    seen: dict[tuple[str, Any], Any] = {}
    for value in values:
        seen.setdefault((type(value).__name__, value), value)
    return list(seen.values())


def _precision_recall_f1(predictions: list[Any], truth: list[Any], known: list[Any]) -> tuple[float, float, float]:
    classes = _distinct([*truth, *predictions])
    everything = _distinct([*classes, *known])  # a bool task is binary even if one class never shows up
    scores = []
    for cls in classes:
        tp = sum(1 for p, y in zip(predictions, truth, strict=True) if _same(p, cls) and _same(y, cls))
        predicted = sum(1 for p in predictions if _same(p, cls))
        actual = sum(1 for y in truth if _same(y, cls))
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append((cls, precision, recall, f1))
    if len(everything) <= 2:
        positive = _positive(everything)
        return next(((p, r, f) for cls, p, r, f in scores if _same(cls, positive)), (0.0, 0.0, 0.0))
    return tuple(sum(s[k] for s in scores) / len(scores) for k in (1, 2, 3))  # type: ignore[return-value]


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]
