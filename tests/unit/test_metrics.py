"""Metrics recorded from batch results, snapshots, graph writes and training jobs, each in a fresh registry."""

from __future__ import annotations

import os
import pickle
import socket
import urllib.request
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from learners.config import LearnersConfig
from learners.finetune import TrainingCancelled
from learners.knowledge.model import Entity, Extraction, GraphBatch, Relation
from schemas import ConversationEvent, ModelUpdate
from schemas.errors import BackPressureError, ConfigError
from streams.conversations import ConversationProcessor, ConversationStats
from streams.feedback import BatchResult, PartitionState
from streams.metrics import (
    ConversationMetrics,
    FeedbackMetrics,
    LearnedTally,
    LoopMetrics,
    PredictorMetrics,
    TrainerMetrics,
    serve_metrics,
)
from tests.reference import sea_with_switch
from tests.unit.test_feedback_processor import TOPIC, feedback, records, rig
from workers.settings import MetricsConfig, load_settings
from workers.store.datasets import DatasetInvalid
from workers.trainer.config import TrainerConfig
from workers.trainer.pipeline import JobOutcome
from workers.trainer.service import Trainer

DRIFTING = LearnersConfig.from_mapping(
    {"learners": {"sea": {"task": "binary", "drift": {"delta": 0.002, "cooldown": 1000, "grace": 30}}}}
)


@pytest.fixture
def metrics() -> FeedbackMetrics:
    return FeedbackMetrics(CollectorRegistry())


@pytest.fixture
def conversation_metrics() -> ConversationMetrics:
    return ConversationMetrics(CollectorRegistry())


@pytest.fixture
def trainer_metrics() -> TrainerMetrics:
    return TrainerMetrics(CollectorRegistry())


def value(m: LoopMetrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


# -- feedback: what a batch did --------------------------------------------------------------------


async def test_a_batch_counts_records_learned_dead_letters_and_duplicates(metrics: FeedbackMetrics) -> None:
    r = rig()
    tally = LearnedTally(metrics.events_learned)
    first = [feedback() for _ in range(5)]
    batch = records([*first, b"not json", b'{"schema": "feedback/1"}', first[0]])
    result = await r.processor.process(r.state, batch)
    metrics.record_batch(TOPIC, len(batch), result)
    tally.update(TOPIC, 0, r.state.slots)

    assert value(metrics, "learnloop_events_in_total", topic=TOPIC) == 8
    assert value(metrics, "learnloop_events_learned_total", learner="sea") == 5 == result.learned
    assert value(metrics, "learnloop_events_deadlettered_total", topic=TOPIC, reason="invalid_json") == 1
    assert value(metrics, "learnloop_events_deadlettered_total", topic=TOPIC, reason="validation") == 1
    assert value(metrics, "learnloop_duplicates_dropped_total", topic=TOPIC) == 1

    tally.update(TOPIC, 0, r.state.slots)  # nothing new learned: nothing counted again
    assert value(metrics, "learnloop_events_learned_total", learner="sea") == 5


async def test_learned_per_learner_and_drift_alarms_match_the_learners_own_counts(metrics: FeedbackMetrics) -> None:
    r = rig(DRIFTING)
    tally = LearnedTally(metrics.events_learned)
    stream = sea_with_switch(1500, 1500)
    events = [feedback(features=x, label=y) for x, y in stream] + [feedback(learner="other")] * 3
    total = 0
    for start in range(0, len(events), 500):
        result = await r.processor.process(r.state, records(events[start:start + 500], start=start))
        metrics.record_batch(TOPIC, len(events[start:start + 500]), result)
        tally.update(TOPIC, 0, r.state.slots)
        total += result.learned

    sea, other = r.state.slots["sea"].learner, r.state.slots["other"].learner
    assert sea.drifts > 0, "the stream should drift"
    assert value(metrics, "learnloop_drift_alarms_total", learner="sea") == sea.drifts
    assert value(metrics, "learnloop_events_learned_total", learner="sea") == sea.n_seen == len(stream)
    assert value(metrics, "learnloop_events_learned_total", learner="other") == other.n_seen == 1
    assert value(metrics, "learnloop_duplicates_dropped_total", topic=TOPIC) == 2
    assert total == len(stream) + 1


async def test_a_restored_partition_counts_only_what_it_learns_after_the_snapshot(metrics: FeedbackMetrics) -> None:
    r = rig()
    tally = LearnedTally(metrics.events_learned)
    await r.processor.process(r.state, records([feedback() for _ in range(4)]))
    restored: PartitionState = pickle.loads(pickle.dumps(r.state))
    tally.restored(TOPIC, 0, restored.slots)  # what a rebalance or a rewind does: the snapshot's 4 are not ours
    await r.processor.process(restored, records([feedback() for _ in range(3)], start=4))
    tally.update(TOPIC, 0, restored.slots)
    assert value(metrics, "learnloop_events_learned_total", learner="sea") == 3

    tally.forget(TOPIC, 0)  # revoked, then assigned again with no snapshot: a learner starts from 0
    tally.update(TOPIC, 0, rig().state.slots)
    assert value(metrics, "learnloop_events_learned_total", learner="sea") == 3


def test_predictions_and_dead_letters_count_under_their_own_topic(metrics: FeedbackMetrics) -> None:
    result = BatchResult()
    result.deadlettered["invalid_json"] += 2
    metrics.record_batch("learnloop.predictions", 10, result)
    metrics.record_batch("learnloop.predictions", 0, BatchResult())  # an idle poll adds nothing
    assert value(metrics, "learnloop_events_in_total", topic="learnloop.predictions") == 10
    assert value(metrics, "learnloop_events_deadlettered_total", topic="learnloop.predictions",
                 reason="invalid_json") == 2
    assert metrics.registry.get_sample_value("learnloop_events_in_total", {"topic": TOPIC}) is None


# -- snapshots: learner gauges and snapshot age ----------------------------------------------------


async def test_a_snapshot_publishes_the_learners_status_and_restarts_its_age(metrics: FeedbackMetrics) -> None:
    r = rig()
    await r.processor.process(r.state, records([feedback(label=i % 2 == 0) for i in range(20)]))
    statuses = r.state.statuses()
    metrics.snapshot_written(TOPIC, 3, statuses)

    assert value(metrics, "learnloop_snapshots_total") == 1
    assert value(metrics, "learnloop_learner_events", learner="sea", partition="3") == 20
    for name, v in statuses["sea"]["metrics"].items():
        assert value(metrics, "learnloop_learner_metric", learner="sea", partition="3", metric=name) == v
    assert set(statuses["sea"]["metrics"]) >= {"accuracy", "f1", "log_loss", "rolling_accuracy"}
    age = metrics.registry.get_sample_value("learnloop_snapshot_age_seconds", {"topic": TOPIC, "partition": "3"})
    assert age is not None and 0 <= age < 5

    metrics.forget_partition(TOPIC, 3)  # revoked: another worker exports it now
    exported = {s.name for fam in metrics.registry.collect() for s in fam.samples}
    assert not exported & {"learnloop_learner_events", "learnloop_learner_metric", "learnloop_snapshot_age_seconds"}


def test_a_restored_snapshot_is_as_old_as_when_it_was_written(metrics: FeedbackMetrics) -> None:
    written = datetime.now(UTC) - timedelta(minutes=10)
    metrics.snapshot_restored(TOPIC, 0, written.isoformat())
    age = value(metrics, "learnloop_snapshot_age_seconds", topic=TOPIC, partition="0")
    assert 600 <= age < 610
    assert value(metrics, "learnloop_snapshots_total") == 0  # restoring writes nothing


# -- conversations: the graph ----------------------------------------------------------------------


class FakeExtractor:
    def extract(self, events: Sequence[ConversationEvent]) -> list[Extraction]:
        at = datetime(2025, 1, 1, tzinfo=UTC)
        return [
            Extraction(
                event_id=str(e.event_id), conversation_id=e.conversation_id, occurred_at=at,
                entities=(Entity("a", "A", "ORG"), Entity("b", "B", "PERSON")), mentions=(("a", 1), ("b", 1)),
                relations=(Relation("a", "employs", "b", 0.9, "svo"),),
            )
            for e in events
        ]


class FakeGraph:
    def __init__(self) -> None:
        self.events: set[str] = set()
        self.down = False

    def known_events(self, event_ids: Iterable[str]) -> set[str]:
        return self.events & set(event_ids)

    def write_validated(self, batch: GraphBatch) -> tuple[list[str], set[tuple[str, str, str]]]:
        if self.down:
            raise BackPressureError("graph down")
        self.events.update(batch.event_ids)
        return list(batch.event_ids), set()


def turns(n: int, topic: str = "learnloop.conversations", start: int = 0) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(
            topic=topic, partition=0, offset=start + i, key=b"c1",
            value=ConversationEvent(source="t", conversation_id="c1", turn=i, role="user", text="x").to_json(),
        )
        for i in range(n)
    ]


def test_conversation_batches_count_turns_entities_relations_and_redeliveries(
    conversation_metrics: ConversationMetrics,
) -> None:
    metrics = conversation_metrics
    graph = FakeGraph()
    processor = ConversationProcessor(extractor=FakeExtractor(), graph=graph, source="t", metrics=metrics)
    stats = ConversationStats()
    batch = [*turns(3), SimpleNamespace(topic="learnloop.conversations", partition=0, offset=3, key=None,
                                        value=b"{")]
    processor.process(batch, stats)
    processor.process(batch[:2], stats)  # redelivered: already in the graph

    assert value(metrics, "learnloop_conversation_turns_total") == 3 == stats.written
    assert value(metrics, "learnloop_graph_entities_total") == 6 == stats.entities
    assert value(metrics, "learnloop_graph_relations_total") == 3 == stats.relations
    assert value(metrics, "learnloop_duplicates_dropped_total", topic="learnloop.conversations") == 2
    assert value(metrics, "learnloop_events_deadlettered_total", topic="learnloop.conversations",
                 reason="invalid_json") == 1
    assert value(metrics, "learnloop_graph_write_seconds_count") == 1  # the redelivery wrote nothing

    graph.down = True
    with pytest.raises(BackPressureError):
        processor.process(turns(2, start=10), stats)
    assert value(metrics, "learnloop_graph_write_failures_total") == 1
    assert value(metrics, "learnloop_conversation_turns_total") == 3


# -- trainer: jobs and announced versions ----------------------------------------------------------


class FakeJobs:
    def __init__(self) -> None:
        self.finished: list[tuple[str, str]] = []

    def heartbeat(self, job_id: str, progress: dict[str, Any], *, worker_id: str) -> None:
        pass

    def fail(self, job_id: str, reason: str, *, worker_id: str) -> None:
        self.finished.append((job_id, "failed"))

    def succeed(self, job_id: str, result: dict[str, Any], *, worker_id: str) -> None:
        self.finished.append((job_id, "succeeded"))


class FakePipeline:
    def __init__(self, outcome: JobOutcome | BaseException) -> None:
        self.outcome = outcome

    def run(self, job: Any, *, progress: Any, should_stop: Any = None) -> JobOutcome:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class FakeProducer:
    async def send(self, event: Any) -> None:
        pass

    async def flush(self) -> None:
        pass


def trainer(pipeline: FakePipeline, metrics: TrainerMetrics) -> Trainer:
    return Trainer(jobs=FakeJobs(), pipeline=pipeline, producer=FakeProducer(),  # type: ignore[arg-type]
                   learners=LearnersConfig(), config=TrainerConfig(), worker_id="w", metrics=metrics)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [(RuntimeError("CUDA out of memory"), "failed"), (DatasetInvalid("too few samples"), "dataset_invalid"),
     (TrainingCancelled(), "cancelled")],
)
async def test_a_job_that_does_not_succeed_counts_under_its_outcome(
    trainer_metrics: TrainerMetrics, error: BaseException, outcome: str
) -> None:
    metrics = trainer_metrics
    job: Any = SimpleNamespace(id="j1", model="sea-text", attempts=1)
    await trainer(FakePipeline(error), metrics).run_job(job)
    assert value(metrics, "learnloop_training_jobs_total", model="sea-text", outcome=outcome) == 1
    assert value(metrics, "learnloop_training_job_seconds_count", model="sea-text") == 1
    assert metrics.registry.get_sample_value("learnloop_model_version", {"model": "sea-text",
                                                                         "alias": "champion"}) is None


async def test_a_successful_job_counts_and_sets_the_announced_version(trainer_metrics: TrainerMetrics) -> None:
    metrics = trainer_metrics
    update = ModelUpdate(source="t", model="sea-text", version="7", kind="fine-tuned", uri="models:/sea-text/7",
                         alias="champion", metrics={"f1": 0.9})
    job: Any = SimpleNamespace(id="j1", model="sea-text", attempts=1)
    await trainer(FakePipeline(JobOutcome({}, update)), metrics).run_job(job)
    assert value(metrics, "learnloop_training_jobs_total", model="sea-text", outcome="succeeded") == 1
    assert value(metrics, "learnloop_model_version", model="sea-text", alias="champion") == 7


# -- serving and settings --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_metrics_serves_the_registry_and_is_off_without_a_port(metrics: FeedbackMetrics) -> None:
    metrics.events_in.labels("t").inc(3)
    assert not serve_metrics("127.0.0.1", 0, metrics.registry)
    assert not serve_metrics("127.0.0.1", None, metrics.registry)
    port = free_port()
    assert serve_metrics("127.0.0.1", port, metrics.registry)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert 'learnloop_events_in_total{topic="t"} 3.0' in resp.read().decode()


def test_a_taken_port_stops_the_worker_with_one_line_naming_the_setting(metrics: FeedbackMetrics) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port} .*LEARNLOOP_METRICS__PORT"):
            serve_metrics("127.0.0.1", port, metrics.registry)


def test_a_taken_port_stops_the_lag_exporter_with_one_line() -> None:
    from workers.lag.config import LagConfig
    from workers.lag.exporter import LagExporter

    exporter = LagExporter(None, LagConfig())  # type: ignore[arg-type]  # serving needs no monitor
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"lag metrics on 127.0.0.1:{port} .*LEARNLOOP_LAG__METRICS_PORT"):
            exporter.serve("127.0.0.1", port)


def test_each_worker_has_its_own_default_port_and_one_setting_overrides_or_disables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in list(os.environ):
        if name.startswith("LEARNLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    defaults = load_settings().metrics
    assert defaults.host == "127.0.0.1"
    assert [defaults.port_for(w) for w in ("feedback", "conversations", "trainer")] == [9101, 9102, 9103]
    monkeypatch.setenv("LEARNLOOP_METRICS__PORT", "9200")
    monkeypatch.setenv("LEARNLOOP_METRICS__HOST", "0.0.0.0")
    s = load_settings().metrics
    assert (s.host, s.port_for("feedback"), s.port_for("trainer")) == ("0.0.0.0", 9200, 9200)
    assert MetricsConfig(port=0).port_for("conversations") is None


# -- each worker kind exports its own families only -------------------------------------------------

LOOP = {"learnloop_events_in", "learnloop_events_deadlettered"}
BATCH_LOOP = LOOP | {"learnloop_duplicates_dropped", "learnloop_batch_seconds"}
FAMILIES: dict[type[Any], set[str]] = {
    FeedbackMetrics: BATCH_LOOP | {
        "learnloop_events_learned", "learnloop_events_forwarded", "learnloop_learn_seconds", "learnloop_learner_metric",
        "learnloop_learner_events",
        "learnloop_drift_alarms", "learnloop_snapshots", "learnloop_snapshot_age_seconds",
        "learnloop_model_publications", "learnloop_publish_capture_seconds",
    },
    ConversationMetrics: BATCH_LOOP | {
        "learnloop_graph_write_seconds", "learnloop_graph_write_failures", "learnloop_graph_entities",
        "learnloop_graph_relations", "learnloop_conversation_turns",
    },
    TrainerMetrics: LOOP | {"learnloop_training_jobs", "learnloop_training_job_seconds", "learnloop_model_version",
                            "learnloop_training_stage_seconds"},
    PredictorMetrics: {
        "learnloop_served_version", "learnloop_model_loads", "learnloop_predictions_logged",
        "learnloop_prediction_logs_dropped",
    },
}


def families(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


@pytest.mark.parametrize("kind", list(FAMILIES), ids=lambda k: k.__name__)
def test_each_worker_kind_registers_its_own_families_and_no_other(kind: type[Any]) -> None:
    registry = CollectorRegistry()
    kind(registry)
    assert families(registry) == FAMILIES[kind]


def test_kinds_on_one_registry_share_the_families_they_have_in_common() -> None:
    registry = CollectorRegistry()
    feedback, trainer = FeedbackMetrics(registry), TrainerMetrics(registry)
    assert trainer.events_in is feedback.events_in and LoopMetrics(registry).deadlettered is feedback.deadlettered
    assert families(registry) == FAMILIES[FeedbackMetrics] | FAMILIES[TrainerMetrics]
