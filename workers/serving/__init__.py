"""The serving side of live model versions: the published-model store and predictors built from settings."""

from __future__ import annotations

from collections.abc import Iterable

from streams.predictor import OnlinePredictor, SyncOnlinePredictor
from workers.serving.model_store import RedisModelStore
from workers.settings import Settings

__all__ = ["RedisModelStore", "online_predictor", "sync_online_predictor"]


def online_predictor(settings: Settings, learners: Iterable[str] | None = None, *, log: bool = True) -> OnlinePredictor:
    """An :class:`OnlinePredictor` wired from settings (broker, Redis, snapshot key, serving section).

    ``learners=None`` follows every published learner. Start it with ``async with``; it closes its
    Redis connections when it stops.
    """
    return OnlinePredictor(
        settings.kafka,
        learners,
        store=RedisModelStore.from_config(settings.redis, settings.serving),
        snapshot_key=settings.snapshot.key.get_secret_value().encode(),
        log=log,
        source=settings.source,
        config=settings.serving,
        own_store=True,
    )


def sync_online_predictor(
    settings: Settings, learners: Iterable[str] | None = None, *, log: bool = True
) -> SyncOnlinePredictor:
    """A started :class:`SyncOnlinePredictor` wired from settings; ``close()`` it (or use ``with``)."""
    return SyncOnlinePredictor(
        settings.kafka,
        learners,
        store=RedisModelStore.from_config(settings.redis, settings.serving),
        snapshot_key=settings.snapshot.key.get_secret_value().encode(),
        log=log,
        source=settings.source,
        config=settings.serving,
        own_store=True,
    )
