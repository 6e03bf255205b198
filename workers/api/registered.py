"""``POST /v1/models/{name}/predict``: fine-tuned (MLflow-registered) models, served as their rollouts route.

The gateway runs the subscriber SDK (``streams.subscriber.ModelSubscriber``) following the
``champion`` alias of every fine-tuned model announced on ``learnloop.model-updates``, and
the rollout state of each on ``learnloop.rollouts``. Versions load in a worker thread and
are swapped in whole, so a request is never answered by a half-loaded model; the gateway
answers other routes while they load.

A request carries texts (or a DataFrame-like body, as MLflow's scoring server takes, see
``workers.api.model_inputs``). Each input is answered by the version its rollout assigns
(sticky by ``subject_id``, else by the prediction id; shadow: always the champion) and gets
the ``label``, its ``probability``, the ``model_version`` that answered and a
``prediction_id``. Each answer is logged as a ``PredictionEvent`` (``learner`` and ``model``:
the model's name; ``arm``, ``rollout_id``, ``subject_id``, ``latency_ms``) and, in shadow
mode, the challenger's copy too (``shadow_of`` the answer's id), off the request path.

In order: a ``predict`` key (401/403); a model ever announced (404); a champion announced
(409) and loaded (503, with ``Retry-After``); then the body (413, 415, 422).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from schemas import FeatureValue
from streams.metrics import PredictorMetrics
from streams.mlflow_models import ColumnInput
from streams.prediction_log import PredictionLog
from streams.producer import EventProducer
from streams.routing import RoutedPrediction
from streams.subscriber import ModelNotReady, ModelSubscriber
from streams.topics import Topics
from workers.api.auth import PredictCaller
from workers.api.deps import GatewayDep
from workers.api.ingest import ErrorBody, Rejected, Rejection, _check_media_type, _decode_json, read_capped
from workers.api.model_inputs import TextsBody, decode_model_inputs
from workers.settings import Settings

log = logging.getLogger(__name__)

LOADING_RETRY_S = 5


class ModelPrediction(BaseModel):
    prediction_id: str
    model: str
    model_version: str = Field(description="the version that answered")
    label: FeatureValue | None
    probability: float | None = Field(description="of the label")
    subject_id: str | None = None
    arm: str | None = Field(default=None, description="champion | challenger while a rollout routes; else null")
    rollout_id: str | None = None


class ModelPredictions(BaseModel):
    """One prediction per input, in input order."""

    predictions: list[ModelPrediction]


class RegisteredModels:
    """The gateway's fine-tuned models: a started subscriber and the log its predictions go to."""

    def __init__(self, subscriber: ModelSubscriber) -> None:
        self.subscriber = subscriber

    def check(self, name: str) -> None:
        sub = self.subscriber
        if name not in sub.known:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown model {name!r}: no version of it was announced "
                                "on the model-update topic")  # fmt: skip
        if sub.current(name) is not None:
            return
        announced = sub.announced_version(name, sub.models.get(name, "champion"))
        if announced is None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"model {name!r} has no champion version yet: nothing "
                                "answers until one is promoted")  # fmt: skip
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"model {name!r} version {announced} is still "
                            "loading (or failed to load: see the gateway log); retry shortly",
                            headers={"Retry-After": str(LOADING_RETRY_S)})  # fmt: skip

    def serve(self, name: str, texts: list[str], subjects: list[str | None]) -> list[RoutedPrediction]:
        try:
            return self.subscriber.serve(name, texts, subject_ids=subjects)
        except ModelNotReady:
            self.check(name)
            raise


def mlflow_loader(tracking_uri: str) -> Callable[[str], Any]:
    """Loads ``models:/`` URIs from the gateway's registry (MLflow is imported on the first load)."""

    def load(uri: str) -> Any:
        import mlflow

        from workers.trainer.registry import load_pyfunc

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        return ColumnInput(load_pyfunc(uri))

    return load


async def start_registered(
    settings: Settings, owned: AsyncExitStack, *, producer: EventProducer | None, metrics: PredictorMetrics,
    loader: Callable[[str], Any] | None = None,
) -> RegisteredModels:  # fmt: skip
    """Start following every fine-tuned model's champion; returns at once (versions load in the background)."""
    topics = Topics(settings.kafka.topic_prefix)
    predictions = PredictionLog(settings.kafka, source=settings.source, capacity=settings.serving.log_buffer,
                                topics=topics, metrics=metrics, producer=producer)  # fmt: skip
    await predictions.start()
    owned.push_async_callback(predictions.stop)
    subscriber = ModelSubscriber(
        settings.kafka, {}, every_model="champion", topics=topics, on_prediction=predictions.enqueue,
        loader=loader or mlflow_loader(settings.mlflow.resolved_tracking_uri(settings.data_dir)),
        source=settings.source,
    )  # fmt: skip
    await subscriber.start()
    owned.push_async_callback(subscriber.stop)
    return RegisteredModels(subscriber)


def _endpoint() -> Any:
    async def predict(name: str, request: Request, caller: PredictCaller, gateway: GatewayDep) -> JSONResponse:
        models: RegisteredModels | None = gateway.registered
        if models is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "registered models are not served here")
        models.check(name)  # 404/409/503 before the body is read
        try:
            _check_media_type(request)
            body = await read_capped(request, gateway.config.max_body_bytes)
            texts, subjects = decode_model_inputs(_decode_json(body), max_batch=gateway.config.max_batch)
        except Rejection as rejection:
            for e in rejection.errors:
                gateway.metrics.rejected.labels(e.reason).inc()
            return rejection.response()
        served = await run_in_threadpool(models.serve, name, texts, subjects)
        answers = [ModelPrediction(prediction_id=p.prediction_id, model=p.model, model_version=p.model_version,
                                   label=p.label, probability=p.probability, subject_id=p.subject_id, arm=p.arm,
                                   rollout_id=p.rollout_id) for p in served]  # fmt: skip
        gateway.metrics.predictions.labels(name).inc(len(answers))  # labelled by the model's name
        return JSONResponse(ModelPredictions(predictions=answers).model_dump(mode="json"))

    return predict


def registered_router(max_batch: int) -> APIRouter:
    router = APIRouter(tags=["predict"])
    texts = {"$ref": "#/components/schemas/TextsBody"}
    column = {"type": "array", "items": {"type": "string"}}
    record = {"type": "object", "properties": {"text": {"type": "string"}, "subject_id": {"type": "string"}},
              "required": ["text"], "additionalProperties": False}  # fmt: skip
    mlflow_forms = [
        {"type": "object", "required": ["dataframe_split"], "properties": {"dataframe_split": {
            "type": "object", "properties": {"columns": column, "data": {"type": "array"}}}}},
        {"type": "object", "required": ["dataframe_records"],
         "properties": {"dataframe_records": {"type": "array", "items": record}}},
        {"type": "object", "required": ["inputs"], "properties": {"inputs": {"oneOf": [
            column, {"type": "object", "properties": {"text": column, "subject_id": column}}]}}},
        {"type": "object", "required": ["instances"],
         "properties": {"instances": {"oneOf": [column, {"type": "array", "items": record}]}}},
    ]  # fmt: skip
    router.add_api_route(
        "/v1/models/{name}/predict",
        _endpoint(),
        methods=["POST"],
        response_model=ModelPredictions,
        responses={
            401: {"model": ErrorBody, "description": "no API key, or an unknown one"},
            403: {"model": ErrorBody, "description": "the key lacks the predict scope"},
            404: {"model": ErrorBody, "description": "no version of the model was ever announced"},
            409: {"model": ErrorBody, "description": "the model has no champion version yet"},
            413: {"model": Rejected, "description": f"body over api.max_body_bytes, or more than {max_batch} inputs"},
            415: {"model": Rejected, "description": "a media type other than JSON"},
            422: {"model": Rejected, "description": "invalid JSON, a body of no known form, or an unknown column"},
            503: {"model": ErrorBody, "description": "the champion version is still loading (see Retry-After)"},
        },
        summary="Predict with a fine-tuned model: the version its rollout assigns answers each text",
        description=(
            "Takes `{\"texts\": [...], \"subject_ids\": [...]}` or a body as MLflow's scoring server takes it "
            "(`dataframe_split`, `dataframe_records`, `inputs`, `instances`) with a `text` column and an "
            "optional `subject_id` column. Each answer has `label`, `probability`, `model_version` and "
            "`prediction_id`, and is logged as a `PredictionEvent`; feedback then needs only "
            "`{\"learner\": <model>, \"prediction_id\", \"label\"}`. While a rollout runs, a subject stays on "
            "one version within a step; in shadow mode the champion answers and the challenger's copy is "
            "only logged."
        ),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"oneOf": [texts, *mlflow_forms]}}}}},
    )  # fmt: skip
    return router


__all__ = ["ModelPrediction", "ModelPredictions", "RegisteredModels", "TextsBody", "registered_router"]
