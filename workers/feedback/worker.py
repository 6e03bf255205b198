"""`learnloop worker feedback`: the feedback consumer inside a Faust worker, wired from settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust

from learners.config import LearnersConfig
from schemas import DriftEvent, DriftEventV2
from streams.admin import ensure_topics
from streams.app import EXIT_LOOP_FAILED, LoopService, add_drift_agent, create_app
from streams.consumer import FeedbackConsumer
from streams.dedup import DedupCache
from streams.feedback import FeedbackProcessor
from streams.metrics import serve_metrics
from streams.publisher import ModelPublisher
from streams.topics import Topics
from workers.feedback.redis_store import RedisStore
from workers.serving.model_store import RedisModelStore
from workers.settings import DEV_SNAPSHOT_KEY, Settings

log = logging.getLogger(__name__)


@dataclass
class FeedbackWorker:
    settings: Settings
    learners: LearnersConfig
    store: RedisStore
    consumer: FeedbackConsumer
    models: RedisModelStore | None = None

    @classmethod
    def build(cls, settings: Settings, learners: LearnersConfig | None = None) -> FeedbackWorker:
        learners = learners or settings.load_learners()
        store = RedisStore.from_config(settings.redis, dedup_window=settings.feedback.dedup_window)
        fb = settings.feedback
        sink = None
        if fb.store_samples:
            from workers.feedback.sample_sink import SqlSampleSink
            from workers.store.feedback import FeedbackStore
            from workers.store.migrate import migrated_engine

            sink = SqlSampleSink(FeedbackStore(migrated_engine(settings.database, settings.data_dir)))
        window = DedupCache(store, window=fb.dedup_window)  # dedup lookups stay local to the partition owner
        processor = FeedbackProcessor(
            learners=learners,
            store=window,
            joins=store,
            source=settings.source,
            join_ttl_s=fb.join_ttl_s,
            orphan_wait_s=fb.orphan_wait_s,
            orphan_max=fb.orphan_max,
            collect_samples=sink is not None,
        )
        snapshot_key = settings.snapshot.key.get_secret_value().encode()
        models = publisher = None
        if settings.serving.publish:
            models = RedisModelStore.from_config(settings.redis, settings.serving)
            publisher = ModelPublisher(
                store=models, snapshot_key=snapshot_key, source=settings.source, config=settings.serving
            )
        consumer = FeedbackConsumer(
            kafka=settings.kafka,
            config=fb,
            processor=processor,
            store=window,
            snapshot_key=snapshot_key,
            samples=sink,
            publisher=publisher,
        )
        return cls(settings, learners, store, consumer, models)

    async def prepare(self) -> None:
        """Fail fast with one line when Redis or the broker is unreachable; create the topics."""
        await self.store.ping()
        await ensure_topics(self.settings.kafka, Topics(self.settings.kafka.topic_prefix).all())


def run_feedback_worker(settings: Settings, *, learners: LearnersConfig | None = None) -> None:
    """Run until SIGINT/SIGTERM; on stop every owned partition is snapshotted."""
    if settings.snapshot.key.get_secret_value() == DEV_SNAPSHOT_KEY and not _loopback(settings):
        log.warning("LEARNLOOP_SNAPSHOT__KEY is the development default; set a secret key in production")
    worker = FeedbackWorker.build(settings, learners)
    app = create_app(settings.kafka, app_id="learnloop-feedback-worker", data_dir=settings.data_dir / "faust")

    async def remember(ev: DriftEvent | DriftEventV2) -> None:
        await worker.store.record_drift(str(ev.event_id), ev.detected_at.timestamp(), ev.to_json())

    add_drift_agent(app, settings.kafka, remember)

    class Prepare(LoopService):
        async def on_first_start(self) -> None:
            await worker.prepare()

    service = Prepare(worker.consumer)
    serve_metrics(settings.metrics.host, settings.metrics.port_for("feedback"))
    run_faust(app, service, loglevel=settings.log_level)


def run_faust(app: faust.App, *services: Any, loglevel: str = "info") -> None:
    """Run the Faust worker until it stops; exit non-zero when a hosted loop stopped it by failing."""
    fw = faust.Worker(
        app,
        *services,
        loglevel={"warning": "warn"}.get(loglevel, loglevel),
        quiet=True,
        redirect_stdouts=False,
        console_port=0,
    )
    try:
        fw.execute_from_commandline()
    except SystemExit as exc:
        if exc.code in (0, None) and any(getattr(s, "failure", None) is not None for s in services):
            raise SystemExit(EXIT_LOOP_FAILED) from None
        raise


def _loopback(settings: Settings) -> bool:
    hosts = [h.rsplit(":", 1)[0] for h in settings.kafka.bootstrap_servers.split(",")]
    return all(h in ("127.0.0.1", "localhost", "::1", "[::1]") for h in hosts)
