"""What the lag tools print and export: the table, the JSON, the Prometheus series, the settings section."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

import workers.lag.config
import workers.lag.exporter
from workers.lag.cli import PARTITION_COLUMNS, known_groups, metrics_address, render
from workers.lag.config import LagConfig
from workers.lag.exporter import LagMetrics
from workers.lag.freshness import Freshness
from workers.lag.monitor import GroupRow, LagView, PartitionRow
from workers.lag.status import Status
from workers.settings import load_settings


def row(partition: int, current: int | None, end: int, status: Status = Status.OK, **kw: object) -> PartitionRow:
    fields: dict[str, object] = {
        "group": "g", "topic": "t", "partition": partition, "current_offset": current, "log_end_offset": end,
        "lag": None if current is None else end - current, "consumer_id": None, "host": None, "client_id": None,
        "time_lag_s": None if current is None else 2.5, "status": status,
    }
    fields.update(kw)
    return PartitionRow(**fields)  # type: ignore[arg-type]


def group(status: Status = Status.OK, members: int = 0) -> GroupRow:
    return GroupRow("g", status, "Empty", members, 2, 95, 2.5, 1.0)


VIEW = LagView(
    time=1_000.0,
    partitions=[row(0, 42, 137, Status.STOP), row(1, None, 20)],
    groups=[group(Status.ERR)],
    learners=[Freshness("sea", "t", 0, datetime(2026, 1, 1, tzinfo=UTC), None, 3, 75.0, True)],
)


def test_doctests() -> None:
    assert doctest.testmod(workers.lag.config).failed == 0
    assert doctest.testmod(workers.lag.exporter).failed == 0


def test_table_has_the_kafka_consumer_groups_columns_first() -> None:
    lines = render(VIEW).splitlines()
    assert lines[0].split() == list(PARTITION_COLUMNS)
    assert PARTITION_COLUMNS[:9] == ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                                     "CONSUMER-ID", "HOST", "CLIENT-ID")
    assert lines[1].split() == ["g", "t", "0", "42", "137", "95", "-", "-", "-", "2.5s", "STOP"]
    assert lines[2].split() == ["g", "t", "1", "-", "20", "-", "-", "-", "-", "-", "OK"]
    # columns line up: each value starts where its header does
    assert lines[1].index("137") == lines[0].index("LOG-END-OFFSET")


def test_table_has_group_and_learner_sections() -> None:
    text = render(VIEW)
    assert "GROUP STATUS STATE" in " ".join(text.split())
    assert ["g", "ERR", "Empty", "0", "2", "95", "2.5s"] in [ln.split() for ln in text.splitlines()]
    assert "75.0s STALE" in text


def test_table_notes_missing_assignments_when_members_exist() -> None:
    view = LagView(1.0, [row(0, 1, 2)], [group(members=1)], [])
    assert "no partition assignments" in render(view)
    assert "no partition assignments" not in render(VIEW)


def test_empty_view() -> None:
    assert render(LagView(1.0, [], [], [])) == "no consumer groups found"


def test_json_rows_carry_the_describe_keys() -> None:
    doc = VIEW.as_json()
    assert set(doc) == {"sampled_at", "partitions", "groups", "learners"}
    first = doc["partitions"][0]
    assert {k: first[k] for k in ("group", "topic", "partition", "current_offset", "log_end_offset", "lag")} == {
        "group": "g", "topic": "t", "partition": 0, "current_offset": 42, "log_end_offset": 137, "lag": 95,
    }
    assert first["status"] == "STOP" and first["time_lag_s"] == 2.5
    assert doc["partitions"][1]["lag"] is None
    assert doc["groups"][0]["status"] == "ERR"


def test_metrics_one_hot_statuses_and_sweeping() -> None:
    reg = CollectorRegistry()
    m = LagMetrics(reg)
    m.update(VIEW)
    part = {"group": "g", "topic": "t", "partition": "0"}
    assert reg.get_sample_value("learnloop_consumer_lag", part) == 95
    assert reg.get_sample_value("learnloop_consumer_lag_seconds", part) == 2.5
    assert reg.get_sample_value("learnloop_committed_offset", part) == 42
    assert reg.get_sample_value("learnloop_log_end_offset", {"topic": "t", "partition": "1"}) == 20
    assert reg.get_sample_value("learnloop_consumer_status", {**part, "status": "STOP"}) == 1
    assert reg.get_sample_value("learnloop_consumer_status", {**part, "status": "OK"}) == 0
    assert reg.get_sample_value("learnloop_consumer_status_code", part) == 4
    assert reg.get_sample_value("learnloop_group_status", {"group": "g", "status": "ERR"}) == 1
    assert reg.get_sample_value("learnloop_group_status_code", {"group": "g"}) == 3
    assert reg.get_sample_value("learnloop_model_freshness_seconds", {"learner": "sea"}) == 75
    assert reg.get_sample_value("learnloop_model_stale", {"learner": "sea"}) == 1
    # a partition without commits exports no lag series
    assert reg.get_sample_value("learnloop_consumer_lag", {**part, "partition": "1"}) is None
    m.update(LagView(2.0, [], [], []))
    assert reg.get_sample_value("learnloop_consumer_lag", part) is None
    assert reg.get_sample_value("learnloop_group_status", {"group": "g", "status": "ERR"}) is None
    assert reg.get_sample_value("learnloop_lag_exporter_last_sample_timestamp_seconds") == 2.0


def test_config_is_frozen_and_strict() -> None:
    cfg = LagConfig(groups=["a"], window=3)
    with pytest.raises(ValidationError):
        LagConfig(windw=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        LagConfig(window=1)
    with pytest.raises(ValidationError):
        cfg.window = 5


def test_settings_section_and_defaults() -> None:
    s = load_settings()
    assert isinstance(s.lag, LagConfig) and s.lag == LagConfig()
    groups = known_groups(s)
    assert groups[s.feedback.group_id] == [f"{s.kafka.topic_prefix}feedback", f"{s.kafka.topic_prefix}predictions"]
    assert groups[s.trainer.group_id] == [f"{s.kafka.topic_prefix}retrain"]


def test_metrics_address_prefers_the_lag_section_when_set() -> None:
    s = load_settings()
    assert metrics_address(s, LagConfig(metrics_host="0.0.0.0", metrics_port=9200)) == ("0.0.0.0", 9200)
    assert s.metrics.port is None
    assert metrics_address(s, LagConfig()) == (s.metrics.host, 9108)  # no shared port: the exporter's own
    shared = load_settings(metrics={"host": "0.0.0.0", "port": 9300})
    assert metrics_address(shared, LagConfig()) == ("0.0.0.0", 9300)
    assert metrics_address(shared, LagConfig(metrics_port=9200)) == ("0.0.0.0", 9200)


def test_a_failed_partition_shows_why_in_the_table_the_json_and_the_metrics() -> None:
    why = "cannot restore t partition 0 (learner sea): snapshot signature does not verify"
    failed = row(0, 42, 137, Status.STOP, failure=why, failure_reason="snapshot_signature")
    view = LagView(1.0, [failed, row(1, None, 20)], [group(Status.ERR)], [])
    lines = render(view).splitlines()
    at = lines.index(next(ln for ln in lines if ln.startswith("GROUP") and "STOPPED-BECAUSE" in ln))
    assert lines[at + 1].split()[:3] == ["g", "t", "0"] and lines[at + 1].endswith(why)
    assert "STOPPED-BECAUSE" not in render(VIEW)
    assert view.as_json()["partitions"][0]["failure"] == why
    assert VIEW.as_json()["partitions"][0]["failure"] is None
    reg = CollectorRegistry()
    m = LagMetrics(reg)
    m.update(view)
    labels = {"group": "g", "topic": "t", "partition": "0", "reason": "snapshot_signature"}
    assert reg.get_sample_value("learnloop_partition_failure", labels) == 1
    m.update(VIEW)  # processed again: the series goes
    assert reg.get_sample_value("learnloop_partition_failure", labels) is None
