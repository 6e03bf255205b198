"""Prometheus metrics of the rollout controller (``learnloop worker rollouts``)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

ROLLOUT_ACTIONS = ("start", "advance", "promote", "rollback", "abort", "inconclusive", "pause", "resume")
"""The ``action`` label of ``learnloop_rollout_decisions_total`` (infra/ alerts on ``rollback``)."""


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.share = Gauge("learnloop_rollout_traffic_share",
                           "Challenger traffic share in percent of a model's running rollout (0: none)",
                           ["model"], registry=r)
        self.step = Gauge("learnloop_rollout_step", "Step index of a model's running rollout", ["model"], registry=r)
        self.live_metric = Gauge("learnloop_rollout_live_metric",
                                 "Live decision metric (mean per-example score in [0, 1]) per version in a rollout",
                                 ["model", "version", "arm"], registry=r)
        self.labels = Gauge("learnloop_rollout_labels", "Labelled predictions per version in a rollout",
                            ["model", "version", "arm"], registry=r)
        self.difference = Gauge("learnloop_rollout_difference",
                                "Always-valid interval for challenger minus champion on the decision metric",
                                ["model", "bound"], registry=r)
        self.decisions = Counter("learnloop_rollout_decisions", "Rollout decisions taken, by action",
                                 ["model", "action"], registry=r)
        self.unmatched_labels = Counter("learnloop_rollout_unmatched_labels",
                                        "Feedback with a prediction_id the controller holds no rollout prediction for",
                                        registry=r)
