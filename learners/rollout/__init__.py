"""Rolling out a new model version on live traffic: policy, sticky assignment, sequential decisions.

Pure logic; the rollout controller process feeds it and records what it decides.
"""

from learners.rollout.decide import ArmStats, Decision, RolloutStats, decide, outcome
from learners.rollout.policy import Arm, Guardrails, RolloutPolicy, assign, bucket
from learners.rollout.sequential import ConfidenceSequence, Difference, difference, paired_difference

__all__ = [
    "Arm",
    "ArmStats",
    "ConfidenceSequence",
    "Decision",
    "Difference",
    "Guardrails",
    "RolloutPolicy",
    "RolloutStats",
    "assign",
    "bucket",
    "decide",
    "difference",
    "outcome",
    "paired_difference",
]
