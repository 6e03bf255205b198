"""A rollout policy per model, and the sticky assignment of requests to versions.

In settings or the learners file::

    [rollouts.sea-text]
    mode = "canary"              # shadow | canary | ab
    steps = [5, 25, 50, 100]     # challenger traffic share per step, in %
    min_labels = 500             # labelled predictions per version before a step may end
    max_step_duration_s = 3600   # a step that has not gathered min_labels by then is aborted
    metric = "accuracy"          # accuracy | f1 | log_loss
    alpha = 0.05                 # error rate of the whole sequential test, however often it is read
    min_effect = 0.0             # promote only when better by at least this much
    promote_when = "better"      # better | not_worse (within min_effect)

    [rollouts.sea-text.guardrails]
    max_error_rate_increase = 0.01   # serving errors, challenger minus champion
    max_p95_latency_ratio = 1.5      # challenger p95 over champion p95
    min_requests = 200               # per version before a guardrail may fire
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Arm", "Guardrails", "RolloutPolicy", "assign"]

Arm = Literal["champion", "challenger"]
_BUCKETS = 10_000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Guardrails(_Frozen):
    """Limits on the challenger's serving health, checked before any metric.

    >>> Guardrails().max_p95_latency_ratio
    1.5
    """

    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1)
    max_p95_latency_ratio: float = Field(default=1.5, ge=1)
    #: Latency below this is never a breach (a 0.2 ms model 50 % slower than a 0.1 ms one is fine).
    latency_floor_ms: float = Field(default=5.0, ge=0)
    min_requests: int = Field(default=200, ge=1)


class RolloutPolicy(_Frozen):
    """How a challenger is exposed to traffic and when it is promoted or rolled back.

    >>> p = RolloutPolicy(mode="canary", steps=[5, 25, 100])
    >>> p.share(0), p.share(2), p.final_step
    (5.0, 100.0, 1)
    >>> RolloutPolicy(mode="shadow").steps
    [100.0]
    """

    mode: Literal["shadow", "canary", "ab"] = "canary"
    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 50.0, 100.0])
    min_labels: int = Field(default=500, ge=1)
    max_step_duration_s: float = Field(default=3600.0, gt=0)
    metric: Literal["accuracy", "f1", "log_loss"] = "accuracy"
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_effect: float = Field(default=0.0, ge=0, lt=1)
    promote_when: Literal["better", "not_worse"] = "better"
    guardrails: Guardrails = Field(default_factory=Guardrails)

    @field_validator("steps")
    @classmethod
    def _steps_rise_within_0_100(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("steps must name at least one traffic share")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError(f"every step is a share in (0, 100] %, got {steps}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must rise, got {steps}")
        return steps

    @model_validator(mode="before")
    @classmethod
    def _mode_fits_steps(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        mode, steps = data.get("mode", "canary"), data.get("steps")
        if mode == "shadow":
            # The shadow sees a copy of every request and answers none: a share means nothing.
            if steps not in (None, [100], [100.0]):
                raise ValueError(f"a shadow rollout has no traffic steps (it sees every request), got {steps}")
            return {**data, "steps": [100.0]}
        if mode == "ab":
            if steps is None:
                return {**data, "steps": [50.0]}
            if len(steps) != 1:
                raise ValueError(f"an A/B test runs at one split, e.g. steps = [50]; got {steps}")
        return data

    @property
    def final_step(self) -> int:
        """The step at which promotion is decided.

        A canary whose last step is 100 % decides at the step before it: at 100 % the champion
        would get no traffic and so no fresh labels to compare with, and passing that decision
        *is* moving every request to the challenger (promotion).

        >>> RolloutPolicy(steps=[5, 25, 50, 100]).final_step, RolloutPolicy(steps=[5, 25, 50]).final_step
        (2, 2)
        """
        last = len(self.steps) - 1
        return last - 1 if self.mode == "canary" and last > 0 and self.steps[last] >= 100.0 else last

    def share(self, step: int) -> float:
        return float(self.steps[min(step, len(self.steps) - 1)])


def bucket(key: str, salt: str) -> int:
    """A stable bucket in [0, 10000) for ``key``; the salt (the rollout id) decorrelates rollouts.

    >>> bucket("user-1", "r1") == bucket("user-1", "r1")
    True
    """
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def assign(key: str, share_pct: float, salt: str) -> Arm:
    """Which version answers ``key`` (a subject id, else the prediction id) at a challenger share.

    Sticky: the same key gets the same version within a step. Monotone: a key on the challenger
    at 5 % stays on it at 25 %, so a growing canary never flips users back and forth.

    >>> [assign(f"u{i}", 25.0, "r1") for i in range(8)].count("challenger") in range(0, 9)
    True
    >>> all(assign(f"u{i}", 100.0, "r1") == "challenger" for i in range(100))
    True
    """
    return "challenger" if bucket(key, salt) < share_pct * (_BUCKETS / 100.0) else "champion"
