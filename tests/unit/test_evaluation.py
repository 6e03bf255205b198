"""The evaluation gate: metrics by hand on small lists, McNemar on known tables, gate decisions, grades."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from learners.evaluation import EvalReport, bootstrap_diff, evaluate, gate, grade, mcnemar


def table(probas: Sequence[Mapping[Any, float]]) -> Any:
    """A predictor that returns fixed probabilities, row by row, and records single-text calls."""

    def predict(texts: list[str]) -> list[Mapping[Any, float]]:
        if len(texts) == 1:
            predict.single_calls += 1  # type: ignore[attr-defined]
            return [probas[int(texts[0])]]
        return [probas[int(t)] for t in texts]

    predict.single_calls = 0  # type: ignore[attr-defined]
    return predict


def report(correct: list[bool], f1: float = 0.8, accuracy: float | None = None, log_loss: float = 0.3) -> EvalReport:
    acc = sum(correct) / len(correct) if accuracy is None else accuracy
    return EvalReport(acc, f1, f1, f1, log_loss, 1.0, 2.0, [], correct)


def test_binary_metrics_match_a_hand_count() -> None:
    # truth:      T  T  T  F  F  T
    # predicted:  T  F  T  T  F  T   -> tp=3, fp=1, fn=1, tn=1
    probas = [{True: 0.9, False: 0.1}, {True: 0.4, False: 0.6}, {True: 0.8, False: 0.2},
              {True: 0.7, False: 0.3}, {True: 0.2, False: 0.8}, {True: 0.6, False: 0.4}]  # fmt: skip
    truth = [True, True, True, False, False, True]
    r = evaluate(table(probas), [str(i) for i in range(6)], truth)
    assert r.accuracy == pytest.approx(4 / 6)
    assert (r.precision, r.recall, r.f1) == pytest.approx((3 / 4, 3 / 4, 3 / 4))
    expected = -sum(math.log(x) for x in (0.9, 0.4, 0.8, 0.3, 0.8, 0.6)) / 6
    assert r.log_loss == pytest.approx(expected)
    assert r.predictions == [True, False, True, True, False, True]
    assert r.correct == [True, False, True, False, True, True]


def test_positive_class_is_the_larger_label() -> None:
    # With 0/1 labels the positive class is 1; with strings the last in sort order ("pos").
    probas = [{0: 0.2, 1: 0.8}, {0: 0.6, 1: 0.4}, {0: 0.7, 1: 0.3}]
    r = evaluate(table(probas), ["0", "1", "2"], [1, 1, 0])  # tp=1, fn=1, fp=0
    assert (r.precision, r.recall) == (1.0, 0.5) and r.f1 == pytest.approx(2 / 3)
    words = [{"neg": 0.1, "pos": 0.9}, {"neg": 0.9, "pos": 0.1}]
    r = evaluate(table(words), ["0", "1"], ["neg", "neg"])  # one false positive, no true positive
    assert (r.precision, r.recall, r.f1, r.accuracy) == (0.0, 0.0, 0.0, 0.5)


def test_multiclass_metrics_are_macro_averaged() -> None:
    one_hot = {"a": {"a": 1.0}, "b": {"b": 1.0}, "c": {"c": 1.0}}
    predicted = ["a", "a", "b", "c", "c", "c"]
    truth = ["a", "b", "b", "c", "c", "a"]
    r = evaluate(table([one_hot[p] for p in predicted]), [str(i) for i in range(6)], truth)
    # per class (precision, recall): a (1/2, 1/2), b (1/1, 1/2), c (2/3, 2/2)
    f1s = [0.5, 2 * 1 * 0.5 / 1.5, 2 * (2 / 3) * 1 / (5 / 3)]
    assert r.precision == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert r.recall == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert r.f1 == pytest.approx(sum(f1s) / 3)
    # A wrong class with probability 0 is clipped, not infinite.
    assert math.isfinite(r.log_loss) and r.log_loss > 10


def test_latency_is_timed_on_up_to_100_single_predictions() -> None:
    predictor = table([{True: 0.9, False: 0.1}] * 150)
    r = evaluate(predictor, [str(i) for i in range(150)], [True] * 150)
    assert predictor.single_calls == 100
    assert 0 < r.latency_p50_ms <= r.latency_p95_ms
    assert set(r.metrics()) == {"accuracy", "precision", "recall", "f1", "log_loss", "latency_p50_ms", "latency_p95_ms"}


def test_evaluate_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        evaluate(table([{True: 1.0}] * 2), ["0", "1"], [True])


def test_mcnemar_exact_branch_on_a_known_table() -> None:
    # b = 1 (only A right), c = 9 (only B right): two-sided binomial p = 2 * (1 + 10) / 2**10.
    a = [True] * 5 + [True] + [False] * 9
    b = [True] * 5 + [False] + [True] * 9
    statistic, p = mcnemar(a, b)
    assert statistic == 1.0 and p == pytest.approx(22 / 1024)
    assert mcnemar(a, b) == mcnemar(b, a)


def test_mcnemar_chi_square_branch_with_continuity_correction() -> None:
    # b = 30, c = 10: chi2 = (|30 - 10| - 1)^2 / 40; with 1 dof, p = erfc(sqrt(chi2 / 2)).
    a = [True] * 30 + [False] * 10 + [True] * 50
    b = [False] * 30 + [True] * 10 + [True] * 50
    statistic, p = mcnemar(a, b)
    assert statistic == pytest.approx(19**2 / 40)
    assert p == pytest.approx(math.erfc(math.sqrt(19**2 / 40 / 2)))
    assert mcnemar([True] * 3, [True] * 3) == (0.0, 1.0)
    with pytest.raises(ValueError, match="same examples"):
        mcnemar([True], [True, False])


def test_bootstrap_interval_brackets_the_difference() -> None:
    a = [True] * 80 + [False] * 20
    b = [True] * 60 + [False] * 40
    diff, low, high = bootstrap_diff(a, b, n=500, seed=1)
    assert diff == pytest.approx(0.2) and low < diff < high and low > 0
    assert bootstrap_diff(a, b, n=500, seed=1) == (diff, low, high)  # seeded
    assert bootstrap_diff(a, a, n=100) == (0.0, 0.0, 0.0)


def test_a_first_candidate_that_beats_the_baselines_becomes_champion() -> None:
    truth = [True] * 60 + [False] * 40
    decision = gate(report([True] * 92 + [False] * 8, f1=0.91), None, labels=truth, online_metric=0.85)
    assert (decision.promote, decision.alias) == (True, "champion")
    assert "majority class (accuracy 0.920 vs 0.600)" in decision.reason and "grade A" in decision.reason


def test_the_demo_first_candidate_that_says_true_to_everything_is_not_promoted() -> None:
    # The field case: accuracy 0.693, recall 1.0, grade D, promoted only because there was no champion.
    truth = [True] * 693 + [False] * 307
    says_yes = EvalReport(0.693, 0.693, 1.0, 0.819, 0.62, 1.0, 2.0, [True] * 1000, [y is True for y in truth])
    decision = gate(says_yes, None, labels=truth)
    assert (decision.promote, decision.alias) == (False, "challenger")
    assert "does not beat the majority class (0.693)" in decision.reason


def test_a_first_candidate_with_grade_d_is_never_promoted() -> None:
    truth = [True] * 50 + [False] * 50
    decision = gate(report([True] * 65 + [False] * 35, f1=0.65), None, labels=truth)
    assert not decision.promote and "grade D" in decision.reason


def test_a_first_candidate_must_beat_the_online_learner() -> None:
    truth = [True] * 50 + [False] * 50
    decision = gate(report([True] * 90 + [False] * 10, f1=0.9), None, labels=truth, online_metric=0.93)
    assert not decision.promote and "online learner's prequential 0.930" in decision.reason
    lower_is_better = gate(report([True] * 90 + [False] * 10, f1=0.9, log_loss=0.3), None, labels=truth,
                           online_metric=0.25, metric="log_loss")
    assert not lower_is_better.promote


def test_without_held_out_labels_a_first_candidate_is_not_promoted() -> None:
    assert not gate(report([True, False]), None).promote


def test_gate_keeps_a_worse_candidate_as_challenger() -> None:
    champion = report([True] * 90 + [False] * 10, f1=0.9)
    candidate = report([True] * 70 + [False] * 30, f1=0.7)
    decision = gate(candidate, champion)
    assert not decision.promote and decision.alias == "challenger"
    assert decision.delta == pytest.approx(-0.2) and "no better than the champion" in decision.reason


def test_gate_needs_the_margin() -> None:
    champion = report([True] * 90 + [False] * 10, f1=0.900)
    candidate = report([True] * 100, f1=0.904)
    decision = gate(candidate, champion, margin=0.01)
    assert not decision.promote and decision.reason == "+0.004 F1 is below the 0.01 margin"


def test_gate_needs_significance() -> None:
    # +0.1 F1 on 20 examples: 2 discordant pairs, exact p = 0.5.
    champion = report([True] * 16 + [False] * 4, f1=0.8)
    candidate = report([True] * 18 + [False] * 2, f1=0.9)
    decision = gate(candidate, champion)
    assert not decision.promote and decision.alias == "challenger"
    assert decision.reason == "+0.100 F1 but not significant (p=0.5)" and decision.p_value == pytest.approx(0.5)


def test_gate_promotes_a_better_significant_candidate() -> None:
    champion = report([True] * 60 + [False] * 40, f1=0.6)
    candidate = report([True] * 90 + [False] * 10, f1=0.9)
    decision = gate(candidate, champion, margin=0.05, alpha=0.01)
    assert decision.promote and decision.alias == "champion"
    assert decision.p_value is not None and decision.p_value < 0.01 and decision.delta == pytest.approx(0.3)
    assert decision.reason.startswith("+0.300 F1 over the champion, significant")


def test_gate_on_log_loss_prefers_lower() -> None:
    champion = report([True] * 60 + [False] * 40, log_loss=0.6)
    candidate = report([True] * 90 + [False] * 10, log_loss=0.2)
    decision = gate(candidate, champion, metric="log_loss")
    assert decision.promote and decision.delta == pytest.approx(0.4)
    with pytest.raises(ValueError, match="different splits"):
        gate(candidate, report([True] * 10))


@pytest.mark.parametrize(
    ("f1", "accuracy", "log_loss", "expected"),
    [
        (0.95, 0.92, 0.2, "A"),
        (0.90, 0.90, 0.7, "A"),  # thresholds are inclusive; log-loss 0.7 itself is fine
        (0.95, 0.85, 0.2, "B"),  # the weaker of F1 and accuracy decides
        (0.95, 0.95, 0.71, "B"),  # confident mistakes cost one letter
        (0.75, 0.80, 0.3, "C"),
        (0.65, 0.70, 0.3, "D"),
        (0.65, 0.70, 1.2, "F"),
        (0.59, 0.90, 0.3, "F"),
        (0.10, 0.10, 3.0, "F"),  # already F: stays F
        (0.95, 0.95, math.nan, "B"),
    ],
)
def test_grade_thresholds(f1: float, accuracy: float, log_loss: float, expected: str) -> None:
    assert grade(report([True], f1=f1, accuracy=accuracy, log_loss=log_loss)) == expected
