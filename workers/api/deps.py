"""The gateway's state on ``app.state`` and the dependencies that hand it to routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from streams.topics import Topics
from workers.api.auth import KeyRing
from workers.api.config import ApiConfig
from workers.api.metrics import ApiMetrics
from workers.api.ports import EventPublisher, HistoryStore, ServingModels, StatusStore
from workers.settings import Settings


@dataclass
class Gateway:
    """Everything a request handler needs; built by ``create_app``, filled in by its lifespan."""

    settings: Settings
    config: ApiConfig
    keyring: KeyRing
    metrics: ApiMetrics
    topics: Topics
    publisher: EventPublisher | None = None
    store: StatusStore | None = None
    models: ServingModels | None = None
    history: HistoryStore | None = None  # None: the app was given a store of its own and no history
    # Fine-tuned models (workers.api.registered.RegisteredModels); None: the app was given its own models.
    registered: Any = None
    # The MLflow registry, made on first use of /v1/models (importing MLflow takes seconds).
    registry: Any = field(default=None, repr=False)
    jobs: Any = field(default=None, repr=False)  # the SQL job store, opened at the first jobs request

    def require_publisher(self) -> EventPublisher:
        if self.publisher is None:
            raise RuntimeError("the gateway's producer is not started (is the app running under its lifespan?)")
        return self.publisher

    def require_models(self) -> ServingModels:
        if self.models is None:
            raise RuntimeError("the gateway's served models are not started (is the app running under its lifespan?)")
        return self.models

    def require_store(self) -> StatusStore:
        if self.store is None:
            raise RuntimeError("the gateway's Redis store is not started (is the app running under its lifespan?)")
        return self.store


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
