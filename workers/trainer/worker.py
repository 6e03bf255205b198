"""Wiring of `learnloop worker trainer` from settings."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from learners.config import LearnersConfig
from schemas import DeadLetter, RetrainRequest, parse_event
from schemas.errors import InvalidEvent
from streams.admin import ensure_topics
from streams.app import LoopService, create_app
from streams.metrics import serve_metrics
from streams.producer import EventProducer
from streams.topics import Topics
from workers.feedback.worker import run_faust
from workers.settings import Settings
from workers.store.feedback import FeedbackStore
from workers.store.jobs import JobStore
from workers.store.migrate import migrated_engine
from workers.trainer.online_metric import OnlineMetrics
from workers.trainer.pipeline import TrainingPipeline
from workers.trainer.service import Trainer
from workers.trainer.stages import HeavyImports

log = logging.getLogger(__name__)


def build_trainer(settings: Settings, learners: LearnersConfig | None = None) -> Trainer:
    # torch, transformers and peft load while MLflow loads and the worker joins its group: a worker is ready
    # sooner, and the first job finds them in (or waits only for the rest).
    imports = HeavyImports().start()
    from workers.trainer.registry import ModelRegistry  # imports MLflow: only where it is needed

    learners = learners or settings.load_learners()
    engine = migrated_engine(settings.database, settings.data_dir)  # schema managed by Alembic
    registry = ModelRegistry(settings.mlflow, settings.data_dir)
    pipeline = TrainingPipeline(
        store=FeedbackStore(engine), registry=registry, finetune=settings.training,
        config=settings.trainer, source=settings.source, imports=imports,
        rolls_out=lambda model: settings.rollout.enabled or model in learners.rollouts,
        online_metric=OnlineMetrics(settings.redis),
    )
    return Trainer(
        jobs=JobStore(engine), pipeline=pipeline, producer=EventProducer(settings.kafka),
        learners=learners, config=settings.trainer, learners_file=settings.learners_file,
    )


def log_trainable_models(learners: LearnersConfig, learners_file: Path) -> None:
    """Say at start which models this trainer can build, and from whose samples: the file decides it."""
    models: dict[str, list[str]] = {}
    for name in learners.declared:
        if (model := learners.learners[name].retrain_model) is not None:
            models.setdefault(model, []).append(name)
    if not models:
        log.warning(
            "learners file %s names no retrain_model: every retrain request will be rejected "
            "(set LEARNLOOP_LEARNERS_FILE to the file the feedback worker uses)", learners_file,
        )
    for model, names in models.items():
        log.info("model %s trains on the samples of learner(s) %s (%s)", model, ", ".join(names), learners_file)


class TrainerLoop:
    """The runner as a loop the Faust worker hosts."""

    def __init__(self, trainer: Trainer, settings: Settings) -> None:
        self.trainer = trainer
        self.settings = settings

    async def start(self) -> None:
        await ensure_topics(self.settings.kafka, Topics(self.settings.kafka.topic_prefix).all())
        await self.trainer.producer.start()

    async def run(self) -> None:
        await self.trainer.run()

    def request_stop(self) -> None:
        self.trainer.request_stop()

    async def stop(self) -> None:
        self.trainer.request_stop()
        await self.trainer.producer.stop()


def run_trainer_worker(settings: Settings, learners: LearnersConfig | None = None) -> None:
    learners = learners or settings.load_learners()
    log_trainable_models(learners, settings.learners_file)
    trainer = build_trainer(settings, learners)
    # The group id is what `learnloop retrain` looks for to tell whether a trainer is listening.
    app = create_app(settings.kafka, app_id=settings.trainer.group_id, data_dir=settings.data_dir / "faust")
    topics: dict[str, Any] = app.contract_topics  # type: ignore[attr-defined]

    @app.agent(topics["retrain"], name=f"{settings.kafka.topic_prefix}retrain-intake")  # type: ignore[untyped-decorator,unused-ignore]
    async def intake(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            trainer.metrics.events_in.labels(msg.topic).inc()
            try:
                req = parse_event(event.value, RetrainRequest)
            except InvalidEvent as exc:
                dl = DeadLetter.from_record(
                    topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
                    value=msg.value, error=exc, source=settings.source,
                )
                await topics["deadletter"].send(key=msg.key, value=dl.to_json(), headers=dl.headers())
                trainer.metrics.deadlettered.labels(msg.topic, dl.reason).inc()
                continue
            assert isinstance(req, RetrainRequest)
            await asyncio.to_thread(trainer.intake, req)

    serve_metrics(settings.metrics.host, settings.metrics.port_for("trainer"))
    run_faust(app, LoopService(TrainerLoop(trainer, settings)), loglevel=settings.log_level)
