"""AdwinMonitor: ADWIN's detections, filtered by grace and cooldown, with window statistics."""

from __future__ import annotations

import random
from itertools import pairwise
from typing import Any

import pytest
from river import datasets, drift

from learners.config import DriftSpec, LearnerSpec
from learners.drift import AdwinMonitor
from learners.labels import Target
from learners.online import OnlineLearner


def regime_errors(n_regimes: int = 12, length: int = 400, seed: int = 1) -> list[float]:
    """Bernoulli errors whose rate jumps between 0.05 and 0.6 every ``length`` events."""
    rng = random.Random(seed)
    return [
        float(rng.random() < (0.05 if regime % 2 == 0 else 0.6)) for regime in range(n_regimes) for _ in range(length)
    ]


def raw_adwin_positions(errors: list[float], delta: float = 0.002) -> list[int]:
    adwin = drift.ADWIN(delta=delta)
    positions = []
    for i, error in enumerate(errors, start=1):
        adwin.update(error)
        if adwin.drift_detected:
            positions.append(i)
    return positions


def reported(monitor: AdwinMonitor, errors: list[float]) -> list[int]:
    return [info.n_seen for error in errors if (info := monitor.update(error)) is not None]


def test_without_grace_or_cooldown_every_adwin_detection_is_reported() -> None:
    errors = regime_errors()
    raw = raw_adwin_positions(errors)
    assert len(raw) >= 8
    assert reported(AdwinMonitor(cooldown=0, grace=0, direction="any"), errors) == raw


def test_by_default_only_a_rising_error_is_a_drift() -> None:
    errors = regime_errors()  # regimes alternate 0.05 / 0.6, starting low
    monitor = AdwinMonitor(cooldown=0, grace=0)
    infos = [info for e in errors if (info := monitor.update(e)) is not None]
    rising = [info.n_seen for info in infos]
    regime_of = [(p - 1) // 400 for p in rising]
    assert rising and all(r % 2 == 1 for r in regime_of)  # only in the 0.6 regimes
    assert all(i.after_mean > i.before_mean for i in infos)
    assert monitor.suppressed == len(raw_adwin_positions(errors)) - len(infos) > 0


def test_window_statistics_split_the_old_and_the_new_error() -> None:
    monitor = AdwinMonitor(cooldown=0, grace=0)
    infos = [info for e in [0.0] * 1000 + [1.0] * 200 if (info := monitor.update(e)) is not None]
    first = infos[0]
    assert first.before_mean < 0.05 < 0.3 < first.after_mean
    assert first.before_n + first.after_n == first.n_seen  # ADWIN's window still held everything


@pytest.mark.parametrize(("grace", "cooldown"), [(30, 1000), (0, 700), (1000, 0), (2500, 1500)])
def test_grace_and_cooldown_filter_adwin_detections(grace: int, cooldown: int) -> None:
    errors = regime_errors()
    raw = raw_adwin_positions(errors)
    expected: list[int] = []
    for position in raw:
        if position > grace and (not expected or position - expected[-1] >= cooldown):
            expected.append(position)
    monitor = AdwinMonitor(cooldown=cooldown, grace=grace, direction="any")
    got = reported(monitor, errors)
    assert got == expected
    assert all(b - a >= cooldown for a, b in pairwise(got))
    assert all(position > grace for position in got)
    assert monitor.drifts == len(got)
    assert monitor.suppressed == len(raw) - len(got)
    assert monitor.n_seen == len(errors)


def test_window_statistics_before_and_after_the_cut() -> None:
    monitor = AdwinMonitor(cooldown=0, grace=0)
    reference = drift.ADWIN()
    for error in regime_errors(n_regimes=2, length=1000):
        before = (reference.width, reference.estimation)
        reference.update(error)
        info = monitor.update(error)
        if info is not None:
            kept_n, kept_mean = reference.width, reference.estimation
            dropped_n = before[0] + 1 - kept_n
            assert info.before_n == dropped_n
            assert info.before_mean == pytest.approx((before[0] * before[1] + error - kept_n * kept_mean) / dropped_n)
            assert (info.after_n, info.after_mean) == (kept_n, kept_mean)
            assert info.after_mean > info.before_mean  # the error went up
            assert (info.detector, info.delta) == ("adwin", 0.002)
            assert monitor.drift_detected and monitor.last_drift == info
            break
    else:
        pytest.fail("no drift in a stream whose error rate jumps from 5% to 60%")
    monitor.update(0.0)
    assert not monitor.drift_detected and monitor.last_drift == info


def sea(variant: int, n: int, seed: int) -> list[tuple[dict[str, Any], bool]]:
    return [({str(k): v for k, v in x.items()}, y) for x, y in datasets.synth.SEA(variant=variant, seed=seed).take(n)]


def test_learner_detects_an_abrupt_concept_switch_near_the_switch() -> None:
    # SEA variant 0 (threshold 8) then variant 3 (threshold 9.5): 3k + 3k events.
    stream = sea(0, 3000, 1) + sea(3, 3000, 2)
    learner = OnlineLearner("sea", LearnerSpec(drift=DriftSpec(cooldown=1000, grace=30)))
    positions = [out.drift.n_seen for x, y in stream if (out := learner.learn_one(x, Target(y, 1.0))).drift]
    assert positions, "the concept switch went unnoticed"
    assert 3000 < positions[0] <= 3500
    assert all(b - a >= 1000 for a, b in pairwise(positions))
    assert learner.drifts == len(positions)
    assert learner.last_drift is not None and learner.last_drift.n_seen == positions[-1]


def test_learner_stays_quiet_on_a_stable_concept() -> None:
    learner = OnlineLearner("sea", LearnerSpec())
    for x, y in sea(0, 4000, 9):
        learner.learn_one(x, Target(y, 1.0))
    assert learner.drifts == 0


def test_nothing_is_reported_during_grace() -> None:
    errors = [0.0] * 200 + [1.0] * 300
    assert raw_adwin_positions(errors)[0] < 400
    monitor = AdwinMonitor(cooldown=0, grace=400)
    assert all(position > 400 for position in reported(monitor, errors))
    assert monitor.suppressed >= 1
