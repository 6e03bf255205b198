"""`learnloop retrain MODEL` against a real broker, SQL store and `learnloop worker trainer` process.

A retrain of a model trains on the learners whose ``retrain_model`` is that model, and the command
says so when no trainer is consuming the retrain topic (the request then waits there).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas import RetrainRequest
from streams.metrics import TrainerMetrics
from tests.conftest import worker_env
from tests.integration.util import ROOT, free_port, learnloop_families, start_worker, stop_worker, wait_for
from tests.unit.test_metrics import FAMILIES
from workers.settings import Settings
from workers.store.engine import make_engine
from workers.store.feedback import FeedbackStore
from workers.store.jobs import JobStore
from workers.store.migrate import upgrade
from workers.store.samples import SampleIn
from workers.trainer.config import MlflowConfig, TrainerConfig
from workers.trainer.pipeline import TrainingPipeline
from workers.trainer.registry import ModelRegistry

pytestmark = pytest.mark.integration

# "sea" feeds sea-text. A learner merely named like the model (an older config stored its samples) does not.
LEARNERS = """
[learners.sea]
task = "binary"
retrain_model = "sea-text"
[learners.other]
task = "binary"
retrain_model = "other-text"
[learners.sea-text]
task = "binary"
"""


def samples(learner: str, n: int) -> list[SampleIn]:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    return [SampleIn(event_id=str(uuid.uuid4()), learner=learner, text=f"{learner} ticket {i}", label=i % 2 == 0,
                     weight=1.0, source="test", occurred_at=t0 + timedelta(seconds=i)) for i in range(n)]


def retrain(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "workers.cli", "retrain", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


async def test_retrain_uses_the_learners_naming_the_model_and_warns_while_no_trainer_listens(
    settings: Settings, tmp_path: Path
) -> None:
    settings.learners_file.write_text(LEARNERS)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    engine = make_engine(url)
    port = free_port()
    FeedbackStore(engine).add_many(samples("sea", 30) + samples("other", 20) + samples("sea-text", 10))
    env = {
        **worker_env(settings),
        "LEARNLOOP_DATABASE__URL": url,
        "LEARNLOOP_MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "LEARNLOOP_MLFLOW__ARTIFACT_LOCATION": (tmp_path / "artifacts").as_uri(),
        "LEARNLOOP_METRICS__PORT": str(port),
        "LEARNLOOP_TRAINER__SETTLE_S": "3600",  # the job stays queued: this test looks at it, not at training
    }

    first = retrain(env, "sea-text")
    assert first.stdout.startswith("requested sea-text: request ")
    assert f"warning: no trainer is consuming {settings.kafka.topic_prefix}retrain" in first.stderr, first.stderr

    log = tmp_path / "trainer.log"
    trainer = start_worker(env, log, "trainer")
    jobs = JobStore(engine)
    try:
        async def queued() -> bool:
            assert trainer.poll() is None, log.read_text()[-3000:]
            return bool(jobs.list(model="sea-text"))

        await wait_for(queued, timeout=180, every=0.5, what="the trainer to take the waiting request")
        [job] = jobs.list(model="sea-text")
        assert (job.status, job.reason, job.learners) == ("queued", "manual", ["sea"])
        pipeline = TrainingPipeline(
            store=FeedbackStore(engine), registry=ModelRegistry(MlflowConfig(), tmp_path),
            finetune=settings.training, config=TrainerConfig(min_samples=10, min_per_class=2), source="test",
        )
        dataset = pipeline.dataset(job)
        assert len(dataset) == 30
        assert all(text.startswith("sea ticket") for text in dataset.texts)

        second = retrain(env, "sea-text")  # a trainer is listening now: no warning, and the request joins the job
        assert "warning" not in second.stderr, second.stderr
        rid = second.stdout.split("request ")[-1].strip()
        RetrainRequest(request_id=rid, model="sea-text", reason="manual", source="test")  # a well-formed id

        async def coalesced() -> bool:
            [again] = jobs.list(model="sea-text")
            return rid in again.request_ids

        await wait_for(coalesced, timeout=60, every=0.5, what="the second request to join the queued job")
        # The trainer's own families, no zero series of the feedback or conversation worker's.
        assert learnloop_families(port) == FAMILIES[TrainerMetrics]
    finally:
        assert stop_worker(trainer) == 0, log.read_text()[-3000:]
