"""The words and names infra/ shares with the code: training outcomes, recorded series, charted metrics.

Beside tests/unit/test_infra.py (which checks that every metric a dashboard or rule names is one the
code exports, with its labels): here, the other way round. The training outcomes the alerts and the
dashboards name are the code's one vocabulary (``TrainingOutcome``), every recorded series is read by
something, and the metrics an operator needs are on a dashboard or in an alert.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.unit.test_infra import DASHBOARD_FILES, METRICS, RULES, _panels, base_metric
from workers.store.models import FAILED_OUTCOMES, TrainingOutcome

ALERTS = {r["alert"]: r for _, _, r in RULES if "alert" in r}
RECORDINGS = {r["record"]: r for _, _, r in RULES if "record" in r}
DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in DASHBOARD_FILES}

# What an operator must be able to see: each is on a dashboard or in an alert rule.
KEY_METRICS = {
    "learnloop_events_in_total", "learnloop_events_learned_total", "learnloop_events_deadlettered_total",
    "learnloop_duplicates_dropped_total", "learnloop_batch_seconds", "learnloop_learner_metric",
    "learnloop_drift_alarms_total", "learnloop_snapshot_age_seconds", "learnloop_graph_write_seconds",
    "learnloop_graph_write_failures_total", "learnloop_training_jobs_total", "learnloop_training_job_seconds",
    "learnloop_model_version", "learnloop_consumer_lag", "learnloop_consumer_lag_seconds",
    "learnloop_consumer_status", "learnloop_group_status", "learnloop_model_freshness_seconds",
    "learnloop_api_requests_total", "learnloop_api_request_duration_seconds", "learnloop_api_events_produced_total",
    "learnloop_api_events_rejected_total",
}

_TRAINING_SELECTOR = re.compile(r"learnloop_training_jobs_total\s*\{([^}]*)\}")
_OUTCOME_MATCHER = re.compile(r'\boutcome\s*(=~|=|!=|!~)\s*"([^"]*)"')


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel query and query variable of every dashboard."""
    out = []
    for name, board in DASHBOARDS.items():
        out += [(f"{name}: {p['title']}", t["expr"]) for p in _panels(board) for t in p.get("targets") or []]
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                out.append((f"{name}: ${var['name']}", query))
    return out


RULE_EXPRS = [(r.get("alert") or r["record"], r["expr"]) for _, _, r in RULES]
ALL_EXPRS = dashboard_exprs() + RULE_EXPRS


def outcomes_named(expr: str) -> list[tuple[str, set[str]]]:
    """Each ``outcome`` matcher on the training-jobs metric in ``expr``: its operator and the outcomes it
    names (a regex as its alternatives). Other metrics' ``outcome`` labels have their own words."""
    return [(op, set(value.split("|")))
            for selector in _TRAINING_SELECTOR.findall(expr) for op, value in _OUTCOME_MATCHER.findall(selector)]


def test_the_outcome_check_reads_matchers() -> None:
    expr = 'learnloop_training_jobs_total{outcome=~"failed|dataset_invalid", model="m"}'
    assert outcomes_named(expr) == [("=~", {"failed", "dataset_invalid"})]
    assert outcomes_named("sum by (outcome) (learnloop_training_jobs_total)") == []
    assert outcomes_named('learnloop_model_loads_total{outcome=~"refused_.*"}') == []


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_every_training_outcome_named_in_infra_is_one_of_the_code(where: str, expr: str) -> None:
    words = {o.value for o in TrainingOutcome}
    for _, named in outcomes_named(expr):
        assert named <= words, f"{where}: {sorted(named - words)} not in TrainingOutcome ({sorted(words)})"


def test_the_training_failure_alert_and_panel_count_exactly_the_failed_outcomes() -> None:
    failed = {o.value for o in FAILED_OUTCOMES}
    assert outcomes_named(ALERTS["LearnloopTrainingFailures"]["expr"]) == [("=~", failed)]
    panels = {p["title"]: p for p in _panels(DASHBOARDS["training"])}
    assert outcomes_named(panels["Failed in range"]["targets"][0]["expr"]) == [("=~", failed)]
    interrupted = {o.value for o in TrainingOutcome} - failed - {TrainingOutcome.SUCCEEDED.value}
    assert outcomes_named(panels["Interrupted runs in range"]["targets"][0]["expr"]) == [("=~", interrupted)]


def test_every_recorded_series_is_read_by_a_dashboard_or_a_rule() -> None:
    for name in RECORDINGS:
        pattern = re.compile(rf"{re.escape(name)}(?![\w:])")
        readers = [where for where, expr in ALL_EXPRS if where != name and pattern.search(expr)]
        assert readers, f"{name} is recorded but nothing reads it: use it in a dashboard or remove the rule"


def _metrics_named(expr: str) -> set[str]:
    return {b for token in re.findall(r"[A-Za-z_:][\w:]*", expr) if (b := base_metric(token)) is not None}


def test_every_key_metric_is_on_a_dashboard_or_in_an_alert() -> None:
    assert set(METRICS) >= KEY_METRICS, sorted(KEY_METRICS - set(METRICS))  # still exported by the code
    charted = {m for _, expr in dashboard_exprs() for m in _metrics_named(expr)}
    alerted = {m for r in ALERTS.values() for m in _metrics_named(r["expr"])}
    recorded = {m for r in RECORDINGS.values() for m in _metrics_named(r["expr"])}  # read through a recorded series
    assert KEY_METRICS - charted - alerted - recorded == set()


def test_the_gateway_metrics_have_a_dashboard_and_error_and_latency_alerts() -> None:
    gateway = {m for where, expr in dashboard_exprs() if where.startswith("gateway:") for m in _metrics_named(expr)}
    recorded = {m for r in RECORDINGS.values() for m in _metrics_named(r["expr"])}
    assert {"learnloop_api_events_produced_total", "learnloop_api_events_rejected_total"} <= gateway
    assert {"learnloop_api_requests_total", "learnloop_api_request_duration_seconds"} <= gateway | recorded
    assert "learnloop_api_requests_total" in _metrics_named(ALERTS["LearnloopApiErrors"]["expr"])
    assert "learnloop_api_request_duration_seconds" in _metrics_named(ALERTS["LearnloopApiSlow"]["expr"])
