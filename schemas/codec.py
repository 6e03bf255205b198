"""Reading events off the wire: choose the model by ``schema``, validate, explain failures.

``parse_event`` is on the hot path (tens of thousands of events a second), so a
well-formed event costs one pydantic-core call: JSON is decoded and validated
in one pass, and the model is chosen by a tagged union on ``schema``. Only when
that fails do we decode again, in Python, to say precisely what is wrong; a
failure becomes one ``InvalidEvent`` whose ``reason`` the dead-letter topic keeps.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, overload

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, from_json

from schemas.deadletter import DeadLetter
from schemas.envelope import Envelope, utc_now
from schemas.errors import InvalidEvent
from schemas.events import (
    ConversationEvent,
    DriftEvent,
    DriftEventV2,
    FeedbackEvent,
    KnowledgeUpdate,
    ModelUpdate,
    PredictionEvent,
    RetrainRequest,
    RolloutEvent,
)

E = TypeVar("E", bound=Envelope)

EVENT_MODELS: dict[str, type[Envelope]] = {
    model.SCHEMA_ID: model
    for model in (
        FeedbackEvent,
        PredictionEvent,
        ConversationEvent,
        DriftEvent,
        DriftEventV2,
        RetrainRequest,
        ModelUpdate,
        KnowledgeUpdate,
        DeadLetter,
        RolloutEvent,
    )
}
"""Every event model, keyed by its schema id ("feedback/1", ...)."""

TOPIC_EVENTS: dict[str, tuple[type[Envelope], ...]] = {
    "feedback": (FeedbackEvent,),
    "predictions": (PredictionEvent,),
    "conversations": (ConversationEvent,),
    "drift": (DriftEvent, DriftEventV2),
    "retrain": (RetrainRequest,),
    "model-updates": (ModelUpdate,),
    "knowledge": (KnowledgeUpdate,),
    "deadletter": (DeadLetter,),
    "rollouts": (RolloutEvent,),
}
"""The event models each topic carries (every major version still written), keyed by the topic name
without its prefix; pass one as ``parse_event``'s ``expected``."""

AnyEvent = Annotated[
    FeedbackEvent
    | PredictionEvent
    | ConversationEvent
    | DriftEvent
    | DriftEventV2
    | RetrainRequest
    | ModelUpdate
    | KnowledgeUpdate
    | DeadLetter
    | RolloutEvent,
    Field(discriminator="schema_"),
]
"""Any event, told apart by its ``schema`` field."""

_ANY_EVENT: TypeAdapter[Envelope] = TypeAdapter(AnyEvent)

_KNOWN_MAJORS: dict[str, list[str]] = {}
for _schema_id in EVENT_MODELS:
    _KNOWN_MAJORS.setdefault(_schema_id.partition("/")[0], []).append(_schema_id)

# Loc tags pydantic gives the members of our bool | int | float | str unions.
_UNION_MEMBER_TAGS = frozenset({"bool", "int", "float", "str", "constrained-str"})
_MAX_ERRORS_SHOWN = 10
_MAX_LOC_PART = 64


@overload
def parse_event(data: bytes | str | dict[str, Any], expected: type[E]) -> E: ...
@overload
def parse_event(data: bytes | str | dict[str, Any], expected: tuple[type[Envelope], ...] | None = None) -> Envelope: ...
def parse_event(
    data: bytes | str | dict[str, Any],
    expected: type[Envelope] | tuple[type[Envelope], ...] | None = None,
) -> Envelope:
    """Decode and validate one event; raise ``InvalidEvent`` with a readable one-line reason.

    ``expected`` restricts which events are acceptable (a wrong one gives reason
    ``"unexpected_schema"``). Every event must carry ``schema``, ``event_id`` and
    ``occurred_at`` (see ``Envelope``): the same bytes always give the same event.
    Reasons: ``invalid_json``, ``unknown_schema``, ``unexpected_schema``, ``validation``.

    >>> from schemas import InvalidEvent, parse_event
    >>> raw = (b'{"schema": "feedback/1", "event_id": "0b6f1f7e-3c55-4f0e-9d1a-2f3b4c5d6e7f", '
    ...        b'"occurred_at": "2026-11-21T10:00:00Z", "source": "web", "learner": "ctr", "text": "hi", "rating": 5}')
    >>> parse_event(raw).rating
    5.0
    >>> try:
    ...     parse_event(b'{"schema": "feedback/2"}')
    ... except InvalidEvent as error:
    ...     print(error.reason, "-", error)
    unknown_schema - unsupported schema version 'feedback/2' (this reader knows feedback/1)
    """
    try:
        if isinstance(expected, type):
            if isinstance(data, dict):
                return expected.model_validate(data)
            return expected.model_validate_json(data)
        event = _ANY_EVENT.validate_python(data) if isinstance(data, dict) else _ANY_EVENT.validate_json(data)
    except ValidationError:
        return _parse_slowly(data, expected)
    if expected is not None and not isinstance(event, expected):
        raise InvalidEvent(_unexpected(event.SCHEMA_ID, expected), reason="unexpected_schema")
    return event


def fill_envelope(doc: Mapping[str, Any], schema_id: str | None = None) -> dict[str, Any]:
    """``doc`` with what a writer fills in for its caller before sending: ``schema`` (when
    ``schema_id`` is given), a new ``event_id`` and the current time as ``occurred_at``.

    Values the caller gave are kept. Readers never call this: on the wire all three are required.

    >>> doc = fill_envelope({"learner": "ctr", "event_id": "0b6f1f7e-3c55-4f0e-9d1a-2f3b4c5d6e7f"}, "feedback/1")
    >>> doc["schema"], doc["event_id"], doc["occurred_at"].endswith("+00:00")
    ('feedback/1', '0b6f1f7e-3c55-4f0e-9d1a-2f3b4c5d6e7f', True)
    """
    filled: dict[str, Any] = {"event_id": str(uuid.uuid4()), "occurred_at": utc_now().isoformat()}
    if schema_id is not None:
        filled["schema"] = schema_id
    return {**filled, **doc}


def describe_validation_error(error: ValidationError) -> str:
    """Pydantic's errors as one line: ``"loc: msg; loc: msg"``, unions collapsed, at most ten."""
    parts = [f"{loc}: {msg}" if loc else msg for loc, msg in _collapse_unions(error.errors(include_url=False))]
    if len(parts) > _MAX_ERRORS_SHOWN:
        parts = [*parts[:_MAX_ERRORS_SHOWN], f"and {len(parts) - _MAX_ERRORS_SHOWN} more errors"]
    return "; ".join(parts)


def _parse_slowly(data: object, expected: type[Envelope] | tuple[type[Envelope], ...] | None) -> Envelope:
    """The failure path: decode in Python to classify the problem, then validate for the messages."""
    if isinstance(data, dict):
        obj: object = data
    elif isinstance(data, bytes | bytearray | str):
        obj = _decode(data)
    else:
        raise InvalidEvent(f"an event is JSON bytes, str or a dict, not {type(data).__name__}", reason="invalid_json")
    if not isinstance(obj, dict):
        raise InvalidEvent(f"an event is a JSON object, not {_json_type(obj)}", reason="invalid_json")

    expected_types = (expected,) if isinstance(expected, type) else expected or ()
    model = _choose_model(obj, expected_types)
    try:
        # Validate the original input, not `obj`, so the rules are exactly the fast path's.
        if isinstance(data, dict):
            return model.model_validate(data)
        return model.model_validate_json(data)
    except ValidationError as error:
        raise InvalidEvent(describe_validation_error(error), reason="validation") from None


def _decode(data: bytes | bytearray | str) -> object:
    try:
        if isinstance(data, str):
            data.encode("utf-8")  # a str with lone surrogates is not Unicode text either
        else:
            bytes(data).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError) as error:
        unit = "character" if isinstance(data, str) else "byte"
        raise InvalidEvent(
            f"event is not UTF-8: {error.reason} at {unit} {error.start}", reason="invalid_json"
        ) from None
    try:
        return from_json(data, allow_inf_nan=False)
    except ValueError as error:
        message = f"invalid JSON: {error}"
    try:
        from_json(data, allow_inf_nan=True)
    except ValueError:
        pass
    else:
        message = "invalid JSON: NaN and Infinity are not JSON numbers"
    raise InvalidEvent(message, reason="invalid_json")


def _choose_model(obj: dict[Any, Any], expected_types: tuple[type[Envelope], ...]) -> type[Envelope]:
    if "schema" not in obj:
        raise InvalidEvent("event has no 'schema' field (e.g. \"feedback/1\")", reason="unknown_schema")
    schema = obj["schema"]
    model = EVENT_MODELS.get(schema) if isinstance(schema, str) else None
    if model is None:
        raise InvalidEvent(_unknown(schema), reason="unknown_schema")
    if expected_types and not issubclass(model, expected_types):
        raise InvalidEvent(_unexpected(model.SCHEMA_ID, expected_types), reason="unexpected_schema")
    return model


def _unknown(schema: object) -> str:
    if not isinstance(schema, str):
        return f"'schema' must be a string like \"feedback/1\", not {_json_type(schema)}"
    shown = _short(schema)
    name, slash, _ = schema.partition("/")
    if slash and name in _KNOWN_MAJORS:
        return f"unsupported schema version {shown!r} (this reader knows {', '.join(_KNOWN_MAJORS[name])})"
    return f"unknown schema {shown!r}"


def _unexpected(got: str, expected: type[Envelope] | tuple[type[Envelope], ...]) -> str:
    wanted = (expected,) if isinstance(expected, type) else expected
    return f"expected {' or '.join(m.SCHEMA_ID for m in wanted)}, got {got}"


def _collapse_unions(errors: list[ErrorDetails]) -> list[tuple[str, str]]:
    """One error per value that matched no member of a bool | int | float | str union.

    Pydantic reports one error per member; the useful one is a member's own
    constraint ("finite number", "too long"), else a plain type mismatch.
    """
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(errors):
        loc = errors[i]["loc"]
        if not loc or loc[-1] not in _UNION_MEMBER_TAGS:
            out.append((_loc(loc), errors[i]["msg"]))
            i += 1
            continue
        j = i + 1
        while j < len(errors):
            other = errors[j]["loc"]
            if not other or other[-1] not in _UNION_MEMBER_TAGS or other[:-1] != loc[:-1]:
                break
            j += 1
        group = errors[i:j]
        if len(group) == 1:  # a lone error whose last loc part merely looks like a tag
            out.append((_loc(loc), errors[i]["msg"]))
            i += 1
            continue
        specific = [e for e in group if not e["type"].endswith("_type")]
        msg = specific[0]["msg"] if specific else "Input should be a boolean, a number or a string"
        out.append((_loc(loc[:-1]), msg))
        i = j
    return out


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(_short(str(part)) for part in loc)


def _short(text: str) -> str:
    # Locations and schema ids come from untrusted input: keep the message one short line.
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= _MAX_LOC_PART else text[: _MAX_LOC_PART - 1] + "…"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
