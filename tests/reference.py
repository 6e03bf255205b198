"""The plain River loop the whole system is checked against, and the drifting stream it is fed."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from river import drift, linear_model, metrics, preprocessing
from river.datasets import synth

SEA_LEARNERS = """
[learners.sea]
task = "binary"
model = "logistic_regression"
[learners.sea.drift]
delta = 0.002
cooldown = 1000
grace = 30
"""
"""A learners file whose ``sea`` learner is what :func:`river_reference` computes with its defaults."""


def sea_with_switch(before: int, after: int, *, seed: int = 7) -> list[tuple[dict[str, float], bool]]:
    """SEA variant 0 then variant 3: an abrupt concept switch after ``before`` samples."""
    a = synth.SEA(variant=0, seed=seed).take(before)
    b = synth.SEA(variant=3, seed=seed + 1).take(after)
    return [({f"x{k}": float(v) for k, v in x.items()}, bool(y)) for x, y in itertools.chain(a, b)]


@dataclass
class Reference:
    n: int = 0
    accuracy: float = 0.0
    f1: float = 0.0
    log_loss: float = 0.0
    drifts: list[int] = field(default_factory=list)


def river_reference(
    stream: Iterable[tuple[dict[str, float], bool]],
    *,
    delta: float = 0.002,
    cooldown: int = 1000,
    grace: int = 30,
    direction: str = "increase",
) -> Reference:
    """StandardScaler | LogisticRegression, scored test-then-train, ADWIN on the 0/1 error.

    A detection counts when it is past ``grace``, ``cooldown`` events after the last one, and
    (for ``direction="increase"``) the error of the window ADWIN kept is above the one it dropped.
    """
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    acc, f1, ll = metrics.Accuracy(), metrics.F1(), metrics.LogLoss()
    adwin = drift.ADWIN(delta=delta)
    ref = Reference()
    for i, (x, y) in enumerate(stream, 1):
        proba = model.predict_proba_one(x)
        y_pred = model.predict_one(x)
        acc.update(y, y_pred)
        f1.update(y, y_pred)
        ll.update(y, proba.get(True, 0.0))
        err = float(y_pred != y)
        n0, m0 = adwin.width, adwin.estimation
        adwin.update(err)
        if adwin.drift_detected and i > grace and (not ref.drifts or i - ref.drifts[-1] >= cooldown):
            n1, m1 = adwin.width, adwin.estimation
            dropped = (n0 * m0 + err - n1 * m1) / (n0 + 1 - n1)
            if direction == "any" or m1 > dropped:
                ref.drifts.append(i)
        model.learn_one(x, y)
        ref.n = i
    ref.accuracy, ref.f1, ref.log_loss = acc.get(), f1.get(), ll.get()
    return ref
