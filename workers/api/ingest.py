"""``POST /v1/feedback``, ``/v1/predictions``, ``/v1/conversations``: HTTP in, Kafka out.

A request carries one event (a JSON object) or a batch (a JSON array of them).
In order: the caller needs a ``write`` key (401/403); a declared media type must
be JSON (415); the body may not exceed ``api.max_body_bytes``, checked on
``Content-Length`` before reading and while reading a chunked body (413), nor
hold more than ``api.max_batch`` events (413); every event is validated with
the schemas the workers use, as if read off the wire (422, listing each invalid
event by index, and then *nothing* is produced). HTTP is not the wire, so a
request may leave out what the gateway can fill in: ``schema`` (the route's),
``event_id`` (a new UUID), ``occurred_at`` (the time of the request) and
``source`` (the key's name); the records it produces carry all of them. The
answer is 202 with the event ids once the broker has acknowledged every event;
503 if it did not in ``api.produce_timeout_s`` (some events may then be on the
topic: send your own ``event_id`` to make a retry safe, consumers drop
duplicates by it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections import Counter
from typing import Any

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic_core import from_json, to_json
from starlette.requests import ClientDisconnect

from schemas import (
    ConversationEvent,
    Envelope,
    FeedbackEvent,
    InvalidEvent,
    PredictionEvent,
    fill_envelope,
    parse_event,
)
from streams.producer import route
from workers.api.auth import WriteCaller
from workers.api.deps import Gateway, GatewayDep
from workers.api.ports import Record

log = logging.getLogger(__name__)

INGEST_ROUTES: dict[str, type[Envelope]] = {
    "/v1/feedback": FeedbackEvent,
    "/v1/predictions": PredictionEvent,
    "/v1/conversations": ConversationEvent,
}
"""Each ingest route and the one event type it takes."""
MAX_ERRORS_LISTED = 100


class ItemError(BaseModel):
    index: int | None
    """Position in the array; null when the body is a single object or is wrong as a whole."""
    reason: str
    error: str


class Accepted(BaseModel):
    accepted: int
    event_ids: list[uuid.UUID]


class Rejected(BaseModel):
    detail: str
    invalid: int
    errors: list[ItemError]


class ErrorBody(BaseModel):
    detail: str


class Rejection(Exception):
    """Input refused as a whole (``index`` None) or event by event."""

    def __init__(self, status_code: int, detail: str, errors: list[ItemError]) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.errors = errors

    @classmethod
    def whole(cls, status_code: int, reason: str, detail: str) -> Rejection:
        return cls(status_code, detail, [ItemError(index=None, reason=reason, error=detail)])

    def response(self) -> JSONResponse:
        shown = self.errors[:MAX_ERRORS_LISTED]
        body = {"detail": self.detail, "invalid": len(self.errors), "errors": [e.model_dump() for e in shown]}
        return JSONResponse(body, status_code=self.status_code)


def decode_events(body: bytes, model: type[Envelope], *, default_source: str, max_batch: int) -> list[Envelope]:
    """Every event of a request body, validated; raise ``Rejection`` if any is not valid.

    >>> body = b'[{"learner": "ctr", "text": "hi", "rating": 4}]'
    >>> [e.source for e in decode_events(body, FeedbackEvent, default_source="shop", max_batch=10)]
    ['shop']
    >>> try:
    ...     decode_events(b'[{"learner": "ctr"}]', FeedbackEvent, default_source="shop", max_batch=10)
    ... except Rejection as r:
    ...     print(r.status_code, r.errors[0].index, r.errors[0].reason)
    422 0 validation
    """
    doc = _decode_json(body)
    if isinstance(doc, dict):
        items: list[Any] = [doc]
    elif isinstance(doc, list):
        if not doc:
            raise Rejection.whole(422, "empty_batch", "the array holds no events")
        if len(doc) > max_batch:
            raise Rejection.whole(413, "batch_too_large", f"a batch holds at most {max_batch} events, got {len(doc)}")
        items = doc
    else:
        raise Rejection.whole(422, "invalid_json", f"the body must be an event object or an array of events, "
                                                   f"not {_json_type(doc)}")
    events: list[Envelope] = []
    errors: list[ItemError] = []
    for i, item in enumerate(items):
        index = i if isinstance(doc, list) else None
        if not isinstance(item, dict):
            errors.append(ItemError(index=index, reason="invalid_json", error=f"an event is a JSON object, "
                                                                              f"not {_json_type(item)}"))
            continue
        if _overflows(item):
            # JSON has no infinities: a number like 1e400 would re-encode as `Infinity` and be
            # misreported as invalid JSON, so say what a worker reading the bytes would say.
            errors.append(ItemError(index=index, reason="validation", error="a number is too large to be finite"))
            continue
        item = fill_envelope({"source": default_source, **item}, model.SCHEMA_ID)
        try:
            # Validated from JSON, exactly as a worker reads it off the topic.
            events.append(parse_event(to_json(item, inf_nan_mode="constants"), model))
        except InvalidEvent as error:
            errors.append(ItemError(index=index, reason=error.reason, error=str(error)))
    if errors:
        what = f"{len(errors)} of {len(items)} events are" if isinstance(doc, list) else "the event is"
        raise Rejection(422, f"{what} invalid; nothing was produced", errors)
    return events


def _decode_json(body: bytes) -> Any:
    if not body.strip():
        raise Rejection.whole(422, "invalid_json", "the body is empty: send an event object or an array of events")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejection.whole(
            422, "invalid_json", f"the body is not UTF-8: {error.reason} at byte {error.start}"
        ) from None
    try:
        return from_json(body, allow_inf_nan=False)
    except ValueError as error:
        raise Rejection.whole(422, "invalid_json", f"invalid JSON: {error}") from None


def _overflows(value: object) -> bool:
    if isinstance(value, float):
        return math.isinf(value)
    if isinstance(value, dict):
        return any(_overflows(v) for v in value.values())
    if isinstance(value, list):
        return any(_overflows(v) for v in value)
    return False


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes before more is read than that."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejection.whole(413, "too_large", f"the body is larger than {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:  # a chunked body declares no length: count as it arrives
                raise Rejection.whole(413, "too_large", f"the body is larger than {limit} bytes")
    except ClientDisconnect:
        raise Rejection.whole(400, "client_disconnected", "the client went away before sending the body") from None
    return bytes(body)


def _check_media_type(request: Request) -> None:
    declared = request.headers.get("content-type")
    if declared is None:
        return
    kind = declared.partition(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise Rejection.whole(415, "unsupported_media_type", f"send application/json, not {kind or 'nothing'}")


async def _publish(gateway: Gateway, events: list[Envelope]) -> None:
    records = [Record(*route(e, gateway.topics), e.to_json()) for e in events]
    try:
        await asyncio.wait_for(gateway.require_publisher().publish(records), gateway.config.produce_timeout_s)
    except MessageSizeTooLargeError:
        gateway.metrics.rejected.labels("broker_too_large").inc(len(records))
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "an event is larger than the broker takes") from None
    except (KafkaError, TimeoutError, OSError) as error:
        log.warning("broker did not acknowledge %d event(s): %r", len(records), error)
        gateway.metrics.rejected.labels("broker_unavailable").inc(len(records))
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the broker did not acknowledge the events; some may have been produced: retry with the same event_ids",
        ) from None
    for r in records:
        gateway.metrics.produced.labels(r.topic).inc()


def _endpoint(model: type[Envelope]) -> Any:
    async def ingest(request: Request, caller: WriteCaller, gateway: GatewayDep) -> JSONResponse:
        try:
            _check_media_type(request)
            body = await read_capped(request, gateway.config.max_body_bytes)
            events = decode_events(
                body, model, default_source=caller.name, max_batch=gateway.config.max_batch
            )
        except Rejection as rejection:
            for reason, n in Counter(e.reason for e in rejection.errors).items():
                gateway.metrics.rejected.labels(reason).inc(n)
            return rejection.response()
        await _publish(gateway, events)
        ids = [str(e.event_id) for e in events]
        return JSONResponse({"accepted": len(ids), "event_ids": ids}, status_code=status.HTTP_202_ACCEPTED)

    ingest.__name__ = f"post_{model.SCHEMA_ID.partition('/')[0]}"
    return ingest


def request_body_schema(model: type[Envelope], max_batch: int) -> dict[str, Any]:
    """The OpenAPI request body of an ingest route (the schemas go in components, see ``openapi.py``)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    batch = {"type": "array", "items": ref, "minItems": 1, "maxItems": max_batch}
    return {"required": True, "content": {"application/json": {"schema": {"oneOf": [ref, batch]}}}}


def ingest_router(max_batch: int) -> APIRouter:
    router = APIRouter(tags=["events"])
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": Rejected, "description": "the client disconnected before sending the whole body"},
        401: {"model": ErrorBody, "description": "no API key, or an unknown one"},
        403: {"model": ErrorBody, "description": "the key lacks the write scope"},
        413: {"model": Rejected, "description": "body over api.max_body_bytes, or batch over api.max_batch"},
        415: {"model": Rejected, "description": "a media type other than JSON"},
        422: {"model": Rejected, "description": "invalid JSON or invalid events (nothing was produced)"},
        503: {"model": ErrorBody, "description": "the broker did not acknowledge in time"},
    }
    for path, model in INGEST_ROUTES.items():
        router.add_api_route(
            path,
            _endpoint(model),
            methods=["POST"],
            status_code=status.HTTP_202_ACCEPTED,
            response_model=Accepted,
            response_description="every event was acknowledged by the broker; their ids, in request order",
            responses=errors,
            summary=f"Produce {model.__name__}s (one, or an array of up to {max_batch})",
            description=f"Validated as `{model.SCHEMA_ID}` and produced to its topic with the contract's key. "
            "`source` defaults to the API key's name.",
            openapi_extra={"requestBody": request_body_schema(model, max_batch)},
        )
    return router
