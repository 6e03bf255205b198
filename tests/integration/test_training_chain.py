"""The training loop end to end on CPU with tiny data: request → job → MLflow version → ModelUpdate → subscriber.

Real SQLite store, real MLflow registry (local SQLite), real fine-tuning of the
shipped MiniLM for a few steps, real broker for the announcement.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from learners.config import LearnersConfig
from learners.finetune import FineTuneConfig
from schemas import DataWindow, ModelUpdate, RetrainRequest, parse_event
from streams.admin import ensure_topics
from streams.metrics import TrainerMetrics
from streams.producer import EventProducer
from streams.subscriber import ModelSubscriber
from streams.topics import Topics
from tests.integration.util import read_topic
from workers.cli import app
from workers.settings import Settings
from workers.store.engine import make_engine
from workers.store.feedback import FeedbackStore
from workers.store.jobs import JobStore, job_as_dict
from workers.store.migrate import upgrade
from workers.store.models import TrainingOutcome
from workers.store.samples import SampleIn
from workers.trainer.config import MlflowConfig, TrainerConfig
from workers.trainer.pipeline import TrainingPipeline
from workers.trainer.registry import ModelRegistry
from workers.trainer.service import Trainer
from workers.trainer.stages import STAGES

pytestmark = pytest.mark.integration

GOOD = ["great", "excellent", "helpful", "love", "perfect", "clear", "fast"]
BAD = ["awful", "useless", "slow", "hate", "broken", "wrong", "confusing"]


def sentiment_samples(n: int, *, learner: str = "answers", seed: int = 3, flip: bool = False) -> list[SampleIn]:
    rng = random.Random(seed)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        positive = rng.random() < 0.5
        words = rng.sample(GOOD if positive else BAD, 2)
        text = f"ticket {i}: the answer was {words[0]} and {words[1]}"
        out.append(SampleIn(
            event_id=str(uuid.uuid4()), learner=learner, text=text, label=positive != flip, weight=1.0,
            source="test", occurred_at=t0 + timedelta(seconds=i),
        ))
    return out


# No time budget: on a loaded machine it would cut these runs at a step count that varies.
TINY = FineTuneConfig(max_length=24, batch_size=16, epochs=2, max_steps=30, learning_rate=2e-3, patience=5,
                      max_seconds=None)


class Rig:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.url = url = f"sqlite:///{tmp / 'store.db'}"
        upgrade(url)
        self.engine = make_engine(url)
        self.store = FeedbackStore(self.engine)
        self.jobs = JobStore(self.engine)
        self.registry = ModelRegistry(MlflowConfig(), tmp)
        self.settings = settings
        self.config = TrainerConfig(settle_s=0, min_samples=100, min_per_class=10, margin=0.01)

    def trainer(self, finetune: FineTuneConfig = TINY, *, rolls_out: bool = False) -> Trainer:
        pipeline = TrainingPipeline(
            store=self.store, registry=self.registry, finetune=finetune, config=self.config, source="test",
            rolls_out=lambda model: rolls_out,
        )
        learners = LearnersConfig.from_mapping({"learners": {"answers": {"retrain_model": "answers-text"}}})
        return Trainer(jobs=self.jobs, pipeline=pipeline, producer=EventProducer(self.settings.kafka),
                       learners=learners, config=self.config)

    async def run_one(self, trainer: Trainer, req: RetrainRequest) -> dict[str, object]:
        job = trainer.intake(req)
        claimed = trainer.jobs.claim_next(trainer.worker_id)
        assert claimed is not None and claimed.id == job.id
        await trainer.producer.start()
        try:
            await trainer.run_job(claimed)
        finally:
            await trainer.producer.stop()
        done = self.jobs.get(job.id)
        assert done is not None
        return {"status": done.status, "error": done.error, "result": done.result or {},
                "outcome": job_as_dict(done)["outcome"]}


@pytest.fixture
def rig(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.chdir(tmp_path)  # nothing may land in ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield Rig(settings, tmp_path)


def request(model: str = "answers-text", **kw: object) -> RetrainRequest:
    return RetrainRequest(model=model, reason="manual", source="test", **kw)  # type: ignore[arg-type]


async def test_request_to_registered_version_to_subscriber(settings: Settings, rig: Rig, tmp_path: Path) -> None:
    rig.store.add_many(sentiment_samples(400))
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    outcome = await rig.run_one(rig.trainer(), request())
    assert outcome["status"] == "succeeded", outcome["error"]
    result = outcome["result"]
    assert isinstance(result, dict)
    assert result["version"] == "1" and result["alias"] == "champion"
    assert str(result["reason"]).startswith("no champion yet; beats the majority class"), result["reason"]
    assert result["metrics"]["accuracy"] >= 0.8  # type: ignore[index]
    assert rig.registry.alias_version("answers-text", "champion") == "1"
    assert not (tmp_path / "mlruns").exists()

    topic = Topics(settings.kafka.topic_prefix).model_updates
    [record] = await read_topic(settings.kafka, topic, expect=1)
    update = parse_event(record.value, ModelUpdate)
    assert isinstance(update, ModelUpdate)
    assert (update.uri, update.alias, update.kind) == ("models:/answers-text/1", "champion", "fine-tuned")
    assert update.lineage.n_samples == 400 and update.lineage.parent_version is None

    async with ModelSubscriber(settings.kafka, {"answers-text": "champion"}) as sub:
        served = await sub.wait_ready("answers-text", timeout=120)
        assert served.version == "1"
        out = sub.predict("answers-text", ["the answer was great and helpful", "the answer was awful and slow"])
        assert list(out["label"]) == [True, False]
        assert all(0.5 < p <= 1.0 for p in out["probability"])


async def test_too_little_data_fails_the_job_and_promotes_nothing(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.store.add_many(sentiment_samples(40))
    trainer = rig.trainer()
    trainer.metrics = TrainerMetrics(CollectorRegistry())
    outcome = await rig.run_one(trainer, request())
    assert (outcome["status"], outcome["outcome"]) == ("failed", TrainingOutcome.DATASET_INVALID)
    assert "only 40 samples (need 100)" in str(outcome["error"])
    assert rig.registry.versions("answers-text") == []
    # One word for it in the metric the alert counts and in `learnloop jobs`.
    assert trainer.metrics.registry.get_sample_value(
        "learnloop_training_jobs_total", {"model": "answers-text", "outcome": "dataset_invalid"}) == 1
    monkeypatch.setenv("LEARNLOOP_DATABASE__URL", rig.url)
    res = CliRunner().invoke(app, ["jobs"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    [row] = [line for line in res.output.splitlines() if "answers-text" in line]
    assert "failed" in row and "dataset_invalid" in row


async def test_no_samples_at_all_says_where_samples_come_from(rig: Rig) -> None:
    rig.store.add_many(sentiment_samples(150, learner="someone-else"))  # another learner's samples do not count
    outcome = await rig.run_one(rig.trainer(), request())
    assert outcome["status"] == "failed"
    error = str(outcome["error"])
    assert "no samples in the window for learner(s) answers" in error
    assert "retrain_model" in error and "store_samples" in error
    assert rig.registry.versions("answers-text") == []


async def test_a_candidate_no_better_than_the_champion_stays_challenger(rig: Rig) -> None:
    rig.store.add_many(sentiment_samples(400))
    first = await rig.run_one(rig.trainer(), request())
    assert first["status"] == "succeeded" and first["result"]["alias"] == "champion"  # type: ignore[index]
    # One optimiser step at a tiny rate barely moves the model it starts from (the champion): it cannot beat it.
    weak = TINY.model_copy(update={"max_steps": 1, "learning_rate": 1e-6})
    second = await rig.run_one(rig.trainer(weak), request(window=DataWindow(last_n=400)))
    assert second["status"] == "succeeded", second["error"]
    result = second["result"]
    assert isinstance(result, dict)
    assert (result["version"], result["alias"], result["promoted"]) == ("2", "challenger", False)
    assert result["parent_version"] == "1"
    assert rig.registry.alias_version("answers-text", "champion") == "1"
    assert rig.registry.alias_version("answers-text", "challenger") == "2"


@pytest.mark.timeout(600)  # two fine-tuning jobs on a loaded 2-core machine
async def test_a_second_job_starts_from_the_champion_and_a_job_cut_by_its_time_budget_is_registered(
    rig: Rig,
) -> None:
    rig.store.add_many(sentiment_samples(400))
    first = await rig.run_one(rig.trainer(), request())
    assert first["status"] == "succeeded" and first["result"]["alias"] == "champion"  # type: ignore[index]
    assert first["result"]["warm_start"] is None  # type: ignore[index]
    # 50 epochs would take many minutes: the 3 s budget ends training, the job goes on as usual.
    budget = TINY.model_copy(update={"max_steps": None, "epochs": 50, "max_seconds": 3.0})
    trainer = rig.trainer(budget)
    trainer.metrics = TrainerMetrics(CollectorRegistry())
    second = await rig.run_one(trainer, request())
    assert second["status"] == "succeeded", second["error"]
    result = second["result"]
    assert isinstance(result, dict)
    assert result["stopped_by"] == "time_budget" and 0 < result["steps"] < 50 * 17
    assert result["warm_start"] == "1" and result["parent_version"] == "1"
    assert result["version"] == "2" and result["metrics"]["accuracy"] >= 0.8
    assert result["n_eval"] == 60
    # Where the time went: every stage, in the job, the metric and the MLflow run.
    timings = result["timings_s"]
    assert list(timings) == list(STAGES) and all(v >= 0 for v in timings.values())
    assert timings["training"] >= 3.0
    for stage in STAGES:
        assert trainer.metrics.registry.get_sample_value(
            "learnloop_training_stage_seconds_count", {"model": "answers-text", "stage": stage}) == 1
    run_id = rig.registry.client.get_model_version("answers-text", "2").run_id
    assert run_id is not None
    run = rig.registry.client.get_run(run_id)
    assert run.data.params["warm_start"] == "1" and run.data.params["stopped_by"] == "time_budget"
    assert {f"stage_{s}_s" for s in STAGES[:-1]} <= set(run.data.metrics)


def test_a_burst_of_requests_coalesces_into_one_job(rig: Rig) -> None:
    trainer = rig.trainer()
    ids = {trainer.intake(request(learner="answers")).id for _ in range(10)}
    assert len(ids) == 1
    [job] = rig.jobs.list(model="answers-text")
    assert len(job.request_ids) == 10 and job.status == "queued"


def test_a_model_no_learner_names_is_rejected_at_intake_saying_which_file_to_set(rig: Rig) -> None:
    rig.store.add_many(sentiment_samples(150, learner="nobody-text"))  # named like the model: not its learner
    trainer = rig.trainer()
    job = trainer.intake(request("nobody-text"))
    assert job.status == "rejected"
    assert "no learner in the trainer's learners file names retrain_model 'nobody-text'" in str(job.error)
    assert "LEARNLOOP_LEARNERS_FILE" in str(job.error)
    assert rig.jobs.claim_next(trainer.worker_id) is None
    assert trainer.intake(request("answers-text")).status == "queued"  # a model some learner names still queues


def test_a_drift_request_trains_on_every_learner_of_the_model_a_manual_one_on_the_learner_asked(rig: Rig) -> None:
    pipeline = rig.trainer().pipeline
    learners = LearnersConfig.from_mapping({"learners": {
        "a": {"retrain_model": "m"}, "b": {"retrain_model": "m"}, "c": {"retrain_model": "other"}}})
    trainer = Trainer(jobs=rig.jobs, pipeline=pipeline, producer=EventProducer(rig.settings.kafka),
                      learners=learners, config=rig.config)
    drift = RetrainRequest(model="m", reason="drift", learner="a", source="test")
    assert trainer.learners_for(drift) == ["a", "b"]
    assert trainer.learners_for(request("m")) == ["a", "b"]
    assert trainer.learners_for(request("m", learner="b")) == ["b"]


async def test_a_job_whose_trainer_died_once_too_often_counts_as_failed(rig: Rig) -> None:
    rig.config = TrainerConfig(settle_s=0, stale_after_s=0.05, max_attempts=1)
    trainer = rig.trainer()
    trainer.metrics = TrainerMetrics(CollectorRegistry())
    job = trainer.intake(request())
    assert rig.jobs.claim_next("a-trainer-that-dies") is not None
    await asyncio.sleep(0.2)  # no heartbeat
    await trainer.recover()
    done = rig.jobs.get(job.id)
    assert done is not None and job_as_dict(done)["outcome"] == TrainingOutcome.FAILED
    assert trainer.metrics.registry.get_sample_value(
        "learnloop_training_jobs_total", {"model": "answers-text", "outcome": "failed"}) == 1


async def test_a_candidate_that_beats_the_champion_is_rolled_out_not_promoted(rig: Rig) -> None:
    # The champion learned the labels backwards; the candidate learns them right and beats it offline.
    rig.store.add_many(sentiment_samples(300, flip=True, seed=5))
    first = await rig.run_one(rig.trainer(rolls_out=True), request())
    assert first["result"]["alias"] == "champion"  # type: ignore[index]  # no champion to roll out against
    rig.store.add_many(sentiment_samples(700, seed=6))  # its newest 400 are all later than the flipped ones
    second = await rig.run_one(rig.trainer(rolls_out=True), request(window=DataWindow(last_n=400)))
    result = second["result"]
    assert isinstance(result, dict), second["error"]
    assert (result["version"], result["alias"], result["promoted"], result["rollout"]) == ("2", "challenger",
                                                                                           False, True)
    assert "rolled out against v1" in result["reason"]
    assert rig.registry.alias_version("answers-text", "champion") == "1"
    records = await read_topic(rig.settings.kafka, Topics(rig.settings.kafka.topic_prefix).model_updates, expect=2)
    updates = [parse_event(r.value, ModelUpdate) for r in records]
    assert [(u.version, u.alias, u.rollout) for u in sorted(updates, key=lambda u: u.version)] == [
        ("1", "champion", False), ("2", "challenger", True)]


async def test_an_int8_copy_is_reported_against_its_parent_in_mlflow_and_models_json(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.store.add_many(sentiment_samples(400))
    rig.config = TrainerConfig(settle_s=0, min_samples=100, min_per_class=10, quantize=True)
    outcome = await rig.run_one(rig.trainer(), request())
    assert outcome["status"] == "succeeded", outcome["error"]
    [row] = rig.registry.versions("answers-text")
    metrics = row["metrics"]
    for key in ("size_bytes", "nonzero_params", "latency_b1_p50_ms", "latency_b32_p95_ms", "throughput_per_s"):
        assert metrics[f"int8_{key}"] > 0 and metrics[f"int8_parent_{key}"] > 0, key
    assert metrics["int8_size_bytes"] < metrics["int8_parent_size_bytes"]
    assert metrics["int8_delta_accuracy"] >= -0.02  # only the tolerant layers were quantized
    monkeypatch.setenv("LEARNLOOP_MLFLOW__TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    res = CliRunner().invoke(app, ["models", "--json", "--model", "answers-text"])
    assert res.exit_code == 0, res.output
    [shown] = json.loads(res.output)
    assert shown["metrics"]["int8_delta_accuracy"] == metrics["int8_delta_accuracy"]
