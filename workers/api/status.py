"""Read routes: learners and their history, models, lag, health, readiness, metrics, and the status page.

``/v1/models`` answers 200 with an empty list and a ``note`` when MLflow (the
``train`` extra) is not installed or no registry exists yet: that is a state of
the deployment, not an outage. It answers 503 when the registry fails.
``/v1/lag`` calls ``workers.lag.lag_rows(settings)`` and answers 503 ("lag
monitor unavailable") when that module cannot be imported.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from schemas.errors import StoreUnavailable
from workers.api.auth import ReadCaller
from workers.api.deps import Gateway, GatewayDep
from workers.lag import lag_rows

log = logging.getLogger(__name__)

RECENT_DRIFTS = 100


class MetricPoint(BaseModel):
    at: str = Field(description="RFC 3339: when the learner had learned `n` events")
    n: int = Field(description="events learned by then (the position in the learner's stream)")
    metric: str = Field(description="the metric charted: rolling_accuracy, accuracy, rolling_mae or mae")
    value: float


class MetricHistory(BaseModel):
    learner: str
    every_s: float = Field(description="how often the gateway samples the learners' statuses")
    limit: int = Field(description="points kept per learner; the oldest are dropped")
    points: list[MetricPoint] = Field(description="oldest first; one per sample in which the learner learned")


@dataclass
class ModelListing:
    versions: list[dict[str, Any]]
    note: str | None = None


LagRows = Callable[[], Awaitable[list[Any]]]
ModelSource = Callable[[], Awaitable[ModelListing]]

_registry_lock = threading.Lock()


def lag_source(gateway: GatewayDep) -> LagRows:
    """``workers.lag.lag_rows`` bound to the gateway's settings."""

    async def rows() -> list[Any]:
        return list(await lag_rows(gateway.settings))

    return rows


def model_source(gateway: GatewayDep) -> ModelSource:
    """The registered versions from MLflow, read in a worker thread (the MLflow client blocks)."""

    async def listing() -> ModelListing:
        return await run_in_threadpool(_registry_versions, gateway)

    return listing


def _registry_versions(gateway: Gateway) -> ModelListing:
    s = gateway.settings
    uri = s.mlflow.resolved_tracking_uri(s.data_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        # Opening it would create an empty registry as a side effect of a GET.
        return ModelListing([], note=f"no model registry yet ({uri})")
    with _registry_lock:
        if gateway.registry is None:
            try:
                module = importlib.import_module("workers.trainer.registry")
            except ImportError as error:
                return ModelListing([], note=f"model registry not installed ({error}); install learnloop[train]")
            gateway.registry = module.ModelRegistry(s.mlflow, s.data_dir)
    return ModelListing(list(gateway.registry.versions()))


async def _probe(check: Callable[[], Awaitable[object]], timeout: float) -> str | None:
    """None when ``check`` succeeds in time, else why not."""
    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as error:  # a probe reports any failure; it must not become a 500
        return f"{type(error).__name__}: {error}"[:300]
    return None


def _asset(name: str) -> str:
    return files("workers.api").joinpath("static", name).read_text("utf-8")


def status_router() -> APIRouter:
    router = APIRouter()
    page, script = _asset("status.html"), _asset("status.js")

    @router.get("/healthz", tags=["ops"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        tags=["ops"],
        summary="The broker answers a metadata request and Redis a PING",
        responses={503: {"description": "a dependency is unreachable; `checks` says which"}},
    )
    async def readyz(gateway: GatewayDep) -> JSONResponse:
        timeout = gateway.config.ready_timeout_s
        broker, redis = await asyncio.gather(
            _probe(gateway.require_publisher().ping, timeout), _probe(gateway.require_store().ping, timeout)
        )
        checks = {"broker": broker or "ok", "redis": redis or "ok"}
        failed = [name for name, error in (("broker", broker), ("redis", redis)) if error is not None]
        body = {"status": "not ready" if failed else "ready", "checks": checks, "failed": failed}
        return JSONResponse(body, status_code=503 if failed else 200)

    @router.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def metrics(gateway: GatewayDep) -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get(
        "/v1/learners",
        tags=["status"],
        summary="Each learner's status (metrics, drifts), the most recent drift events, and what this gateway serves",
        description="`serving` maps each declared learner to the version this gateway predicts with "
        "(`version` null until one is published).",
        responses={503: {"description": "Redis is unreachable"}},
    )
    async def learners(_: ReadCaller, gateway: GatewayDep) -> dict[str, Any]:
        store = gateway.require_store()
        try:
            statuses = await store.learner_statuses()
            drifts = await store.recent_drifts(RECENT_DRIFTS)
        except (StoreUnavailable, RedisError, OSError) as error:
            log.warning("learner statuses unavailable: %s", error)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "redis unavailable") from None
        serving = gateway.models.versions() if gateway.models is not None else {}
        return {"learners": statuses, "drifts": drifts, "serving": jsonable_encoder(serving)}

    @router.get(
        "/v1/learners/{name}/history",
        tags=["status"],
        summary="A learner's main metric over time, kept by the gateway in Redis (bounded, oldest dropped)",
        response_model=MetricHistory,
        responses={
            404: {"description": "no such learner: no status and no history"},
            503: {"description": "Redis is unreachable, or this gateway keeps no history"},
        },
    )
    async def learner_history(
        _: ReadCaller, gateway: GatewayDep, name: Annotated[str, PathParam(max_length=200)]
    ) -> MetricHistory:
        if gateway.history is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this gateway keeps no learner history")
        try:
            points = await gateway.history.points(name)
            known = bool(points) or name in {st.get("name") for st in await gateway.require_store().learner_statuses()}
        except (StoreUnavailable, RedisError, OSError) as error:
            log.warning("learner history unavailable: %s", error)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "redis unavailable") from None
        if not known:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no learner named {name!r}")
        config = gateway.config
        return MetricHistory(learner=name, every_s=config.history_every_s, limit=config.history_points,
                                 points=[MetricPoint(**p.as_json()) for p in points])

    @router.get(
        "/v1/models",
        tags=["status"],
        summary="Registered model versions with their aliases and metrics",
        responses={503: {"description": "the model registry failed"}},
    )
    async def models(_: ReadCaller, source: Annotated[ModelSource, Depends(model_source)]) -> dict[str, Any]:
        try:
            listing = await source()
        except Exception as error:  # MLflow's errors have no common root short of this
            log.warning("model registry unavailable: %r", error, exc_info=True)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "model registry unavailable") from None
        return {"versions": jsonable_encoder(listing.versions), "note": listing.note}

    rollout_stores: list[Any] = []

    @router.get(
        "/v1/rollouts",
        tags=["status"],
        summary="Rollouts of challengers (running and paused first), with their live statistics",
        responses={503: {"description": "the database is unreachable or not migrated"}},
    )
    async def rollouts(_: ReadCaller, gateway: GatewayDep) -> dict[str, Any]:
        def read() -> list[dict[str, Any]]:
            from workers.rollouts.store import RolloutStore
            from workers.store.config import database_url
            from workers.store.engine import engine_for

            url = database_url(gateway.settings.database, gateway.settings.data_dir)
            if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
                return []  # opening it would create an empty database as a side effect of a GET

            with _registry_lock:
                if not rollout_stores:  # one engine for the process, made on first use
                    s = gateway.settings
                    rollout_stores.append(RolloutStore(engine_for(s.database, s.data_dir)))
            return rollout_stores[0].rollouts(limit=10)  # type: ignore[no-any-return]

        try:
            rows = await run_in_threadpool(read)
        except StoreUnavailable as error:  # one line that says what to do (migrate, reach the database)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None
        rows.sort(key=lambda r: r["state"] not in ("running", "paused"))
        return {"rollouts": [{k: v for k, v in r.items() if k != "decisions"} for r in rows]}

    @router.get(
        "/v1/lag",
        tags=["status"],
        summary="Consumer lag per group, topic and partition",
        responses={503: {"description": "the lag monitor is not installed or failed"}},
    )
    async def lag(_: ReadCaller, rows: Annotated[LagRows, Depends(lag_source)]) -> dict[str, Any]:
        try:
            found = await rows()
        except Exception as error:  # the lag monitor talks to the broker; report, don't 500
            log.warning("lag rows unavailable: %r", error, exc_info=True)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "lag monitor unavailable") from None
        return {"rows": jsonable_encoder(found)}

    @router.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"status{query}")

    @router.get("/status", include_in_schema=False)
    async def status_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @router.get("/static/status.js", include_in_schema=False)
    async def status_script() -> Response:
        return Response(script, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    return router

