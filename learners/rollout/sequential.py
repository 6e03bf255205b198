"""Always-valid confidence sequences for comparing two model versions on live traffic.

A rollout looks at its numbers every few seconds for hours. A fixed-horizon test (a t-test or a
z-test on the accuracy difference) read that often rejects a true null far more often than its
alpha: with enough peeks, a random walk crosses any fixed boundary. We therefore use a
*confidence sequence*: a sequence of intervals that contain the true mean **at every time at once**
with probability at least ``1 - alpha``. Reading it after every label, and stopping the first time
it excludes a value, keeps the error rate at ``alpha`` however often it is read.

Which one, and why:

- The per-example outcomes we compare are bounded: correctness is 0 or 1, F1 is decided through a
  0/1 outcome (below), and the log-loss is clipped and scaled into [0, 1]. For bounded data the
  *predictable plug-in empirical-Bernstein* sequence (Waudby-Smith & Ramdas, "Estimating means of
  bounded random variables by betting", JRSS-B 2023, Theorem 2) is valid without asymptotics, adapts
  to the variance (tight when a model is almost always right), and updates in O(1) per example.
  mSPRT (Johari et al. 2017) is the other common choice; it assumes normal increments, which 0/1
  outcomes at a 5 % canary share are far from, so its guarantee there is only asymptotic.
- Two versions see different users (canary, A/B), so their streams are independent. Each gets its
  own sequence at ``alpha / 2``; the difference ``B - A`` then lies in
  ``[lo_B - hi_A, hi_B - lo_A]`` at all times with probability at least ``1 - alpha`` (a union
  bound). In shadow mode both versions answer the same request, so the paired difference is used
  directly, mapped from [-1, 1] to [0, 1]: tighter, for the same guarantee.
- F1 is not a mean of per-example scores, but it is a monotone function of the critical success
  index ``J = TP / (TP + FP + FN)`` (``F1 = 2J / (1 + J)``), which *is* the mean of
  ``1[true positive]`` over the examples that are a positive in the truth or in the prediction.
  "B has the higher F1" is therefore the same event as "B has the higher J", and J gets a sequence.

>>> cs = ConfidenceSequence(alpha=0.05)
>>> for i in range(2000):
...     cs.update(1.0 if i % 10 else 0.0)      # 90 % correct
>>> lo, hi = cs.interval()
>>> round(lo, 3) < 0.9 < round(hi, 3), round(hi - lo, 3) < 0.06
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfidenceSequence", "Difference", "difference", "paired_difference"]

#: Upper bound of a bet; 1/2 as in the paper's experiments (any c in (0, 1) keeps validity).
_MAX_LAMBDA = 0.5


def _psi(lam: float) -> float:
    # psi_E(lambda) = (-log(1 - lambda) - lambda) / 4, the empirical-Bernstein penalty.
    return (-math.log1p(-lam) - lam) / 4.0


@dataclass
class ConfidenceSequence:
    """A time-uniform (1 - alpha) confidence sequence for the mean of observations in [0, 1].

    Holds running sums only, so it pickles small and updates in constant time.
    """

    alpha: float = 0.05
    n: int = 0
    _sum_x: float = 0.0  # for the plug-in mean (1/2 + sum x) / (n + 1)
    _sum_sq: float = 0.0  # sum of (x_i - mu_hat_i)^2, for the plug-in variance
    _sum_lam: float = 0.0
    _sum_lam_x: float = 0.0
    _sum_penalty: float = 0.0
    _mu_hat: float = field(default=0.5)
    _var_hat: float = field(default=0.25)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def update(self, x: float) -> None:
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"observations must lie in [0, 1], got {x}")
        t = self.n + 1
        # The bet for observation t uses only observations before t (predictable): that is what
        # makes the sequence valid under optional stopping.
        lam = min(math.sqrt(2.0 * math.log(2.0 / self.alpha) / (self._var_hat * t * math.log1p(t))), _MAX_LAMBDA)
        self._sum_lam += lam
        self._sum_lam_x += lam * x
        self._sum_penalty += 4.0 * (x - self._mu_hat) ** 2 * _psi(lam)
        self.n = t
        self._sum_x += x
        self._mu_hat = (0.5 + self._sum_x) / (t + 1)
        self._sum_sq += (x - self._mu_hat) ** 2
        self._var_hat = (0.25 + self._sum_sq) / (t + 1)

    @property
    def mean(self) -> float:
        """The plain sample mean (0.5 before any observation)."""
        return self._sum_x / self.n if self.n else 0.5

    def interval(self) -> tuple[float, float]:
        """The current interval, clipped to [0, 1]; (0, 1) before any observation."""
        if self.n == 0 or self._sum_lam == 0.0:
            return 0.0, 1.0
        centre = self._sum_lam_x / self._sum_lam
        width = (math.log(2.0 / self.alpha) + self._sum_penalty) / self._sum_lam
        return max(0.0, centre - width), min(1.0, centre + width)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval()
        return {"n": self.n, "mean": self.mean, "lower": lo, "upper": hi, "alpha": self.alpha}


@dataclass(frozen=True)
class Difference:
    """An always-valid interval for ``challenger - champion`` on a metric where higher is better."""

    lower: float
    upper: float
    estimate: float
    n_champion: int
    n_challenger: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "estimate": self.estimate,
            "n_champion": self.n_champion,
            "n_challenger": self.n_challenger,
        }


def difference(champion: ConfidenceSequence, challenger: ConfidenceSequence) -> Difference:
    """``challenger - champion`` from two independent sequences, each built at ``alpha / 2``.

    >>> a, b = ConfidenceSequence(alpha=0.025), ConfidenceSequence(alpha=0.025)
    >>> for i in range(4000):
    ...     a.update(1.0 if i % 4 else 0.0)      # 75 %
    ...     b.update(1.0 if i % 10 else 0.0)     # 90 %
    >>> d = difference(a, b)
    >>> d.lower > 0, round(d.estimate, 2)
    (True, 0.15)
    """
    a_lo, a_hi = champion.interval()
    b_lo, b_hi = challenger.interval()
    return Difference(
        lower=b_lo - a_hi,
        upper=b_hi - a_lo,
        estimate=challenger.mean - champion.mean,
        n_champion=champion.n,
        n_challenger=challenger.n,
    )


def paired_difference(paired: ConfidenceSequence) -> Difference:
    """``challenger - champion`` from one sequence over ``(d + 1) / 2`` with ``d = b - a`` in [-1, 1]."""
    lo, hi = paired.interval()
    return Difference(
        lower=2.0 * lo - 1.0,
        upper=2.0 * hi - 1.0,
        estimate=2.0 * paired.mean - 1.0 if paired.n else 0.0,
        n_champion=paired.n,
        n_challenger=paired.n,
    )
