"""``create_app``: the gateway as a FastAPI app, its producer and Redis store started by its lifespan."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from streams.admin import ensure_topics
from streams.metrics import PredictorMetrics
from streams.producer import EventProducer
from streams.topics import Topics
from workers.api.auth import KeyRing
from workers.api.config import ApiConfig
from workers.api.deps import Gateway
from workers.api.history import HistorySampler, LearnerHistory
from workers.api.ingest import ingest_router
from workers.api.jobs import jobs_router
from workers.api.metrics import ApiMetrics, RequestMetrics
from workers.api.openapi import install_openapi
from workers.api.ports import EventPublisher, HistoryStore, KafkaPublisher, ServingModels, StatusStore
from workers.api.predict import predict_router
from workers.api.registered import registered_router
from workers.api.status import status_router
from workers.feedback.redis_store import RedisStore
from workers.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """Events in over HTTP, validated with learnloop's schemas and produced to Kafka;
predictions from each learner's latest published version, logged for the feedback join;
learner, model and lag status out. Send an API key as `Authorization: Bearer <key>` or `X-API-Key`.
The status page is at [/status](/status)."""


def _version() -> str:
    try:
        return importlib.metadata.version("learnloop")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


async def _stopped(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await task


def create_app(
    settings: Settings,
    *,
    api: ApiConfig | None = None,
    producer: EventPublisher | None = None,
    store: StatusStore | None = None,
    models: ServingModels | None = None,
    history: HistoryStore | None = None,
) -> FastAPI:
    """The gateway app.

    ``api`` defaults to ``settings.api``. A ``producer``, ``store``, ``models`` or
    ``history`` given here is used as is (the caller starts and stops it); otherwise the
    lifespan makes an ``EventProducer`` (creating missing topics first), a ``RedisStore``
    and the served models (``workers.api.serving``, the latest published version of every
    declared learner loaded before the first request) from ``settings`` and closes them at
    shutdown. With its own Redis the gateway also samples the learners' statuses into
    their history (``api.history_every_s``) while it runs.
    """
    config = api if api is not None else settings.api
    gateway = Gateway(
        settings=settings,
        config=config,
        keyring=KeyRing(config.keys, allow_anonymous_read=config.allow_anonymous_read),
        metrics=ApiMetrics(),
        topics=Topics(settings.kafka.topic_prefix),
        publisher=producer,
        store=store,
        models=models,
        history=history,
    )

    # The predictor's metrics (versions served, loads refused, predictions logged) on the gateway's /metrics.
    serving_metrics = PredictorMetrics(gateway.metrics.registry) if models is None else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not config.keys:
            log.warning("no API keys configured (api.keys): only anonymous reads%s are possible",
                        "" if config.allow_anonymous_read else ", and those are off,")
        async with AsyncExitStack() as owned:
            kafka: EventProducer | None = None
            if producer is None:
                await ensure_topics(settings.kafka, gateway.topics.all())
                kafka = EventProducer(settings.kafka, topics=gateway.topics)
                await kafka.start()
                owned.push_async_callback(kafka.stop)
                gateway.publisher = KafkaPublisher(kafka)
                owned.callback(setattr, gateway, "publisher", None)
            if store is None:
                redis = RedisStore.from_config(settings.redis)
                owned.push_async_callback(redis.close)
                gateway.store = redis
                owned.callback(setattr, gateway, "store", None)
                if history is None:
                    kept = LearnerHistory(redis.r, prefix=settings.redis.key_prefix, limit=config.history_points)
                    gateway.history = kept
                    owned.callback(setattr, gateway, "history", None)
                    sampler = HistorySampler(redis.learner_statuses, kept, config.history_every_s)
                    stop = asyncio.Event()
                    task = asyncio.create_task(sampler.run(stop), name="learner-history")
                    owned.push_async_callback(_stopped, task, stop)
            if models is None:
                from workers.api.serving import start_serving  # River and the predictor SDK come with it

                # Started last, so stopped first: the predictions it still has to log go out on `kafka`.
                gateway.models = await start_serving(settings, owned, producer=kafka, metrics=serving_metrics)
                owned.callback(setattr, gateway, "models", None)
                assert serving_metrics is not None
                from workers.api.registered import start_registered

                gateway.registered = await start_registered(settings, owned, producer=kafka, metrics=serving_metrics)
                owned.callback(setattr, gateway, "registered", None)
            yield

    app = FastAPI(
        title="learnloop gateway",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.gateway = gateway
    app.include_router(ingest_router(config.max_batch))
    app.include_router(predict_router(config.max_batch))
    app.include_router(registered_router(config.max_batch))
    app.include_router(status_router())
    app.include_router(jobs_router())
    app.add_middleware(RequestMetrics, metrics=gateway.metrics)
    install_openapi(app)
    return app
