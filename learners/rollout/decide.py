"""Live per-version statistics of a rollout, and the decision taken from them.

Pure: the rollout controller feeds it served predictions (with their latency and whether serving
failed) and labels joined to them, asks :func:`decide` on a timer, and records every decision with
the statistics it was taken on. Everything here round-trips through :meth:`RolloutStats.to_state`
so a controller killed mid-rollout resumes with the same numbers.

The rules, in order (the first that applies wins):

1. **Guardrails** (once each version served ``min_requests``): the challenger's serving error rate
   exceeds the champion's by more than ``max_error_rate_increase``, or its p95 latency exceeds
   ``max_p95_latency_ratio`` times the champion's (and the latency floor) → ``rollback``.
2. **Significantly worse**: the always-valid interval for ``challenger - champion`` lies wholly
   below zero (``-min_effect`` with ``promote_when = "not_worse"``) → ``rollback``.
3. A step ends once the challenger has ``min_labels`` labels in it (and the champion too, while it
   still has traffic). Before the final step → ``advance``. At the final step → ``promote`` when the
   interval's lower end clears ``min_effect`` (``better``) or ``-min_effect`` (``not_worse``). A
   canary ending at 100 % decides at the step before (``RolloutPolicy.final_step``), where both
   versions still get labels; promotion is what moves the last share.
4. A step that has not gathered its labels within ``max_step_duration_s`` → ``abort``; a final
   step that gathered them but stayed undecided that long → ``inconclusive``. Either way the
   champion keeps serving and the candidate is not promoted.
5. Otherwise → ``hold``.

Because promotion needs the interval to clear ``min_effect >= 0`` and the interval is valid at all
times at once, an A/A rollout (two equal versions) is promoted with probability at most ``alpha``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from learners.rollout.policy import Arm, RolloutPolicy
from learners.rollout.sequential import ConfidenceSequence, Difference, difference, paired_difference

__all__ = ["ArmStats", "Decision", "RolloutStats", "decide", "outcome"]

Action = Literal["hold", "advance", "promote", "rollback", "abort", "inconclusive"]

#: Per-example log-loss is clipped here (p = 0.001) and scaled into [0, 1], higher is better.
LOG_LOSS_CLIP = -math.log(1e-3)
#: Recent latencies kept per version for the p95 guardrail.
LATENCY_WINDOW = 2000


def outcome(metric: str, label: Any, prediction: Any, probability: float | None, positive: Any = True) -> float | None:
    """The per-example score in [0, 1] the sequential test averages; ``None`` when it does not count.

    ``accuracy``: 1 when right. ``f1``: 1 for a true positive, 0 for a false positive or false
    negative, ``None`` for a true negative (the critical success index, monotone in F1).
    ``log_loss``: ``1 - min(-log p(label), clip) / clip`` with ``probability`` = p(label).

    >>> outcome("accuracy", True, False, None), outcome("f1", False, False, None)
    (0.0, None)
    >>> round(outcome("log_loss", 1, 1, 0.9), 3)
    0.985
    """
    if metric == "accuracy":
        return 1.0 if prediction == label else 0.0
    if metric == "f1":
        if label != positive and prediction != positive:
            return None
        return 1.0 if label == positive and prediction == positive else 0.0
    if metric == "log_loss":
        p = max(probability if probability is not None else (1.0 if prediction == label else 0.0), 1e-3)
        return 1.0 - min(-math.log(p), LOG_LOSS_CLIP) / LOG_LOSS_CLIP
    raise ValueError(f"unknown rollout metric {metric!r}")


@dataclass
class ArmStats:
    """One version's live numbers within a rollout."""

    cs: ConfidenceSequence
    requests: int = 0
    errors: int = 0
    labels: int = 0
    step_labels: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def served(self, latency_ms: float, *, failed: bool = False) -> None:
        self.requests += 1
        self.errors += int(failed)
        self.latencies_ms.append(latency_ms)

    def labelled(self, score: float | None) -> None:
        self.labels += 1
        self.step_labels += 1
        if score is not None:
            self.cs.update(score)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95_ms(self) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p95_ms": self.p95_ms,
            "labels": self.labels,
            "step_labels": self.step_labels,
            "metric": self.cs.to_dict(),
        }


@dataclass
class RolloutStats:
    """Both versions' numbers; in shadow mode also the paired differences on shared requests."""

    alpha: float
    champion: ArmStats = field(init=False)
    challenger: ArmStats = field(init=False)
    paired: ConfidenceSequence = field(init=False)

    def __post_init__(self) -> None:
        # Two independent sequences at alpha/2 each: their difference covers at 1 - alpha.
        self.champion = ArmStats(ConfidenceSequence(alpha=self.alpha / 2))
        self.challenger = ArmStats(ConfidenceSequence(alpha=self.alpha / 2))
        self.paired = ConfidenceSequence(alpha=self.alpha)

    def arm(self, name: Arm) -> ArmStats:
        return self.challenger if name == "challenger" else self.champion

    def pair(self, champion_score: float | None, challenger_score: float | None) -> None:
        """Shadow mode: both versions scored on the same labelled request."""
        if champion_score is not None and challenger_score is not None:
            self.paired.update((challenger_score - champion_score + 1.0) / 2.0)

    def new_step(self) -> None:
        self.champion.step_labels = 0
        self.challenger.step_labels = 0

    def difference(self, *, paired: bool) -> Difference:
        return paired_difference(self.paired) if paired else difference(self.champion.cs, self.challenger.cs)

    def to_state(self) -> dict[str, Any]:
        def arm(a: ArmStats) -> dict[str, Any]:
            return {**{k: v for k, v in asdict(a).items() if k != "latencies_ms"}, "latencies_ms": list(a.latencies_ms)}

        return {"alpha": self.alpha, "champion": arm(self.champion), "challenger": arm(self.challenger),
                "paired": asdict(self.paired)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RolloutStats:
        out = cls(alpha=float(state["alpha"]))
        for name in ("champion", "challenger"):
            raw = dict(state[name])
            lat = deque(raw.pop("latencies_ms"), maxlen=LATENCY_WINDOW)
            setattr(out, name, ArmStats(cs=ConfidenceSequence(**raw.pop("cs")), latencies_ms=lat, **raw))
        out.paired = ConfidenceSequence(**state["paired"])
        return out


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    statistics: dict[str, Any]


def decide(policy: RolloutPolicy, stats: RolloutStats, *, step: int, step_age_s: float) -> Decision:
    """The next action for a rollout at ``step`` that has run ``step_age_s`` seconds in that step."""
    a, b = stats.champion, stats.challenger
    diff = stats.difference(paired=policy.mode == "shadow")
    numbers = {"step": step, "share": policy.share(step), "difference": diff.to_dict(),
               "champion": a.summary(), "challenger": b.summary(), "metric": policy.metric, "alpha": policy.alpha}

    g = policy.guardrails
    if min(a.requests, b.requests) >= g.min_requests:
        if b.error_rate - a.error_rate > g.max_error_rate_increase:
            return Decision("rollback", f"guardrail: error rate {b.error_rate:.2%} vs champion {a.error_rate:.2%} "
                            f"(limit +{g.max_error_rate_increase:.2%})", numbers)
        if b.p95_ms > max(g.max_p95_latency_ratio * a.p95_ms, g.latency_floor_ms):
            return Decision("rollback", f"guardrail: p95 latency {b.p95_ms:.1f} ms vs champion {a.p95_ms:.1f} ms "
                            f"(limit x{g.max_p95_latency_ratio:g})", numbers)

    tolerance = policy.min_effect if policy.promote_when == "not_worse" else 0.0
    if diff.upper < -tolerance:
        return Decision("rollback", f"challenger worse on {policy.metric}: challenger - champion in "
                        f"[{diff.lower:+.4f}, {diff.upper:+.4f}] (alpha {policy.alpha:g})", numbers)

    champion_has_traffic = policy.mode == "shadow" or policy.share(step) < 100.0
    enough = b.step_labels >= policy.min_labels and (not champion_has_traffic or a.step_labels >= policy.min_labels)
    if not enough:
        if step_age_s >= policy.max_step_duration_s:
            return Decision("abort", f"step {step + 1} gathered {b.step_labels} challenger / {a.step_labels} champion "
                            f"labels in {step_age_s:.0f}s (need {policy.min_labels} each)", numbers)
        return Decision("hold", "gathering labels", numbers)
    if step < policy.final_step:
        return Decision("advance", f"step {step + 1} ({policy.share(step):g} %) passed with {b.step_labels} labels; "
                        f"not worse so far", numbers)
    bar = policy.min_effect if policy.promote_when == "better" else -policy.min_effect
    if diff.lower > bar:
        return Decision("promote", f"challenger better on {policy.metric}: challenger - champion in "
                        f"[{diff.lower:+.4f}, {diff.upper:+.4f}] clears {bar:+.4f} (alpha {policy.alpha:g})", numbers)
    if step_age_s >= policy.max_step_duration_s:
        return Decision("inconclusive", f"no decision on {policy.metric} after {step_age_s:.0f}s at the final step: "
                        f"challenger - champion in [{diff.lower:+.4f}, {diff.upper:+.4f}]", numbers)
    return Decision("hold", "final step: waiting for a significant difference", numbers)
