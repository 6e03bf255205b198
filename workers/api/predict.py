"""``POST /v1/predict/{learner}``: the learner's served version predicts; the answer is logged for the join.

The gateway is a thin HTTP shell over the SDK's ``OnlinePredictor`` (``streams.predictor``):
the same verified versions, the same predict call, the same prediction log, so an app
gets the same answers in-process or over HTTP.

A request carries one input (a JSON object: ``features`` and/or ``text``, optional
``subject_id``) or a batch (a JSON array of them), with the same limits as events.
In order: the caller needs a ``predict`` key (401/403); the learner must be known
(404: not in the learners file and nothing published) and served (409: no version
yet); the body is capped and validated like an ingest body (413, 415, 422, nothing
predicted). Every input of a request is answered by one version, read once, so a
version that arrives mid-request never mixes into its answers.

Each answer has a ``prediction_id``, the ``model_version`` and, from a classifier,
the ``label`` and the class ``probabilities`` (most likely first), from a regressor
the ``value``. Unless ``log=false`` (query parameter), the predictor logs one
``PredictionEvent`` per answer (the features and text served, the prediction, the
version) to ``learnloop.predictions``, so that feedback carrying only the
``prediction_id`` joins to exactly what was served. Logging happens off the request
path: a log the broker refuses is counted in ``learnloop_prediction_logs_dropped_total``
and logged by the gateway. ``subject_id`` (the user, session, ...) is echoed and
logged with the prediction; it does not change it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Self

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas import Features, FeatureValue
from schemas.envelope import Ident, Text
from workers.api.auth import PredictCaller
from workers.api.deps import GatewayDep
from workers.api.ingest import ErrorBody, ItemError, Rejected, Rejection, _check_media_type, _decode_json, read_capped
from workers.api.ports import LearnerUnknown, NoServedVersion, ServedPrediction

log = logging.getLogger(__name__)


class PredictInput(BaseModel):
    """One input to predict: the same ``features``/``text`` limits as a ``FeedbackEvent``'s."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    features: Features | None = None
    text: Text | None = None
    subject_id: Ident | None = Field(default=None, description="who the prediction is for (echoed and logged)")

    @model_validator(mode="after")
    def _needs_input(self) -> Self:
        if self.features is None and self.text is None:
            raise ValueError("an input needs features or text")
        return self


class ClassProbability(BaseModel):
    label: FeatureValue
    probability: float


class Prediction(BaseModel):
    """One answer. ``label`` and ``probabilities`` from a classifier, ``value`` from a regressor."""

    prediction_id: str
    learner: str
    model_version: str
    label: FeatureValue | None = Field(default=None, description="classification: the most likely class")
    probabilities: list[ClassProbability] | None = Field(
        default=None, description="classification: every class seen so far, most likely first"
    )
    value: float | None = Field(default=None, description="regression: the predicted value")
    subject_id: str | None = None
    logged: bool = Field(description="handed to the prediction log (false with log=false): feedback by "
                         "prediction_id can join")


class Predictions(BaseModel):
    """The answer to a batch: one prediction per input, in request order, all from one version."""

    predictions: list[Prediction]


def decode_inputs(body: bytes, *, max_batch: int) -> tuple[list[PredictInput], bool]:
    """The inputs of a body and whether it was a batch; ``Rejection`` (422/413) if any is not valid.

    >>> inputs, batch = decode_inputs(b'[{"features": {"x": 1.5}}, {"text": "hi"}]', max_batch=10)
    >>> [i.features for i in inputs], batch
    ([{'x': 1.5}, None], True)
    """
    doc = _decode_json(body)
    if isinstance(doc, dict):
        items: list[Any] = [doc]
    elif isinstance(doc, list):
        if not doc:
            raise Rejection.whole(422, "empty_batch", "the array holds no inputs")
        if len(doc) > max_batch:
            raise Rejection.whole(413, "batch_too_large", f"a batch holds at most {max_batch} inputs, got {len(doc)}")
        items = doc
    else:
        raise Rejection.whole(422, "invalid_json", "the body must be an input object or an array of inputs")
    inputs: list[PredictInput] = []
    errors: list[ItemError] = []
    for i, item in enumerate(items):
        index = i if isinstance(doc, list) else None
        try:
            inputs.append(PredictInput.model_validate(item))
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            errors.append(ItemError(index=index, reason="validation", error=f"{where}: {message}" if where
                                    else message))
    if errors:
        what = f"{len(errors)} of {len(items)} inputs are" if isinstance(doc, list) else "the input is"
        raise Rejection(422, f"{what} invalid; nothing was predicted", errors)
    return inputs, isinstance(doc, list)


def answer(served: ServedPrediction, given: PredictInput, logged: bool) -> Prediction:
    """The response item for one input."""
    if served.probabilities is None:  # a regressor
        return Prediction(prediction_id=served.prediction_id, learner=served.learner,
                          model_version=served.model_version, value=served.value, subject_id=given.subject_id,
                          logged=logged)  # fmt: skip
    ranked = sorted(served.probabilities.items(), key=lambda kv: kv[1], reverse=True)
    return Prediction(
        prediction_id=served.prediction_id, learner=served.learner, model_version=served.model_version,
        label=served.label, probabilities=[ClassProbability(label=k, probability=p) for k, p in ranked],
        subject_id=given.subject_id, logged=logged,
    )


def _endpoint() -> Any:
    async def predict(
        learner: str,
        request: Request,
        caller: PredictCaller,
        gateway: GatewayDep,
        log_: Annotated[bool, Query(alias="log", description="false: do not log the predictions")] = True,
    ) -> JSONResponse:
        models = gateway.require_models()
        with _http_errors():
            models.check(learner)  # 404/409 before the body is read
        try:
            _check_media_type(request)
            body = await read_capped(request, gateway.config.max_body_bytes)
            inputs, batch = decode_inputs(body, max_batch=gateway.config.max_batch)
        except Rejection as rejection:
            for reason, n in Counter(e.reason for e in rejection.errors).items():
                gateway.metrics.rejected.labels(reason).inc(n)
            return rejection.response()
        with _http_errors():
            served = models.predict(learner, [(i.features, i.text) for i in inputs],
                                    subject_ids=[i.subject_id for i in inputs], log=log_)
        answers = [answer(p, i, log_) for p, i in zip(served, inputs, strict=True)]
        gateway.metrics.predictions.labels(learner).inc(len(answers))
        if batch:
            return JSONResponse(Predictions(predictions=answers).model_dump(mode="json"))
        return JSONResponse(answers[0].model_dump(mode="json"))

    return predict


@contextmanager
def _http_errors() -> Iterator[None]:
    try:
        yield
    except LearnerUnknown as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except NoServedVersion as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None


def predict_router(max_batch: int) -> APIRouter:
    router = APIRouter(tags=["predict"])
    item = {"$ref": "#/components/schemas/PredictInput"}
    body = {"oneOf": [item, {"type": "array", "items": item, "minItems": 1, "maxItems": max_batch}]}
    router.add_api_route(
        "/v1/predict/{learner}",
        _endpoint(),
        methods=["POST"],
        response_model=Prediction | Predictions,
        response_description="an input object is answered with a Prediction; an array with Predictions",
        responses={
            401: {"model": ErrorBody, "description": "no API key, or an unknown one"},
            403: {"model": ErrorBody, "description": "the key lacks the predict scope"},
            404: {"model": ErrorBody, "description": "the learner is not in the learners file and was never published"},
            409: {"model": ErrorBody, "description": "the learner has no served version yet (nothing published)"},
            413: {"model": Rejected, "description": "body over api.max_body_bytes, or batch over api.max_batch"},
            415: {"model": Rejected, "description": "a media type other than JSON"},
            422: {"model": Rejected, "description": "invalid JSON or invalid inputs (nothing was predicted)"},
        },
        summary=f"Predict with a learner's served version (one input, or an array of up to {max_batch})",
        description=(
            "Classifiers answer `label` and `probabilities`, regressors `value`; every answer has "
            "`prediction_id` and `model_version`. Unless `log=false`, each answer is logged as a "
            "`PredictionEvent` on learnloop.predictions first, so feedback later needs only "
            "`{\"learner\", \"prediction_id\", \"label\" | \"rating\" | \"signal\"}`."
        ),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}},
    )
    return router
