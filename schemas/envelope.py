"""The envelope every event shares, the size limits, and the constrained types.

Limits are part of the contract: a producer that respects them is never
dead-lettered for size, and a consumer never holds an unbounded event.
Numbers on the wire are JSON numbers (a string "4.5" is not a rating) and
must be finite: ``NaN`` and ``±Infinity`` are rejected everywhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

MAX_TEXT = 64 * 1024
"""Characters in a free-text field (feedback and prediction text, a conversation turn)."""
MAX_FEATURES = 512
"""Entries in a feature map (and in a metrics map)."""
MAX_KEY = 256
"""Characters in a feature or metric name."""
MAX_STR_VALUE = 1024
"""Characters in a string feature value or a string label."""
MAX_NAME = 128
"""Characters in a learner or model name, an id, a version, a source."""
MAX_COMMENT = 4096
"""Characters in a feedback comment and in a dead letter's error message."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
"""Learner and model names: safe in topic keys, Redis keys, MLflow names and file names."""
TAG_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
"""Open sets of short machine tags: feedback signals, dead-letter reasons."""
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
"""Registry aliases such as ``champion`` and ``challenger``."""


RFC3339_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""A timestamp on the wire: RFC 3339 ``date-time`` with an offset (no leap second), in the JSON Schema too."""
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
"""An id on the wire: a UUID in its hyphenated form (no braces, no ``urn:uuid:``), in the JSON Schema too."""


class _SpelledAs:
    """Takes a value only as text matching ``pattern`` (or, from Python, an instance of the type).

    pydantic alone also takes timestamps as numbers (epoch seconds), "2024-05-01T12:00Z" or
    "+0200", and UUIDs without hyphens or in braces; the contract is the one spelling a JSON
    Schema validator checks as well. The check is a pattern in pydantic-core, so reading an
    event calls no Python for it.
    """

    def __init__(self, kind: type, pattern: str, error: str) -> None:
        self.kind, self.pattern, self.error = kind, pattern, error

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        text = core_schema.chain_schema([core_schema.str_schema(pattern=self.pattern), handler(source)])
        return core_schema.json_or_python_schema(
            json_schema=core_schema.custom_error_schema(
                text, custom_error_type="spelling", custom_error_message=self.error
            ),
            python_schema=core_schema.union_schema(
                [core_schema.is_instance_schema(self.kind), text],
                mode="left_to_right",
                custom_error_type="spelling",
                custom_error_message=self.error,
            ),
        )


def _require_offset(value: datetime) -> datetime:
    # A naive timestamp is ambiguous across producers in different zones; refuse it
    # rather than guess, so ordering and TTLs mean the same thing everywhere.
    if value.tzinfo is None or value.utcoffset() is None:
        raise PydanticCustomError("timezone_aware", "must carry a UTC offset (e.g. 2024-05-01T12:00:00Z or +02:00)")
    return value


def utc_now() -> datetime:
    """The current time as an aware UTC datetime (the default for event timestamps)."""
    return datetime.now(UTC)


def as_utc(dt: datetime) -> datetime:
    """``dt`` in UTC; a naive value (as engines without time zones return them) is taken as UTC.

    >>> as_utc(datetime(2026, 1, 1, 12)).isoformat()
    '2026-01-01T12:00:00+00:00'
    """
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def rfc3339(value: datetime | float | None) -> str | None:
    """A time as every JSON output spells it: RFC 3339 in UTC, with its offset; epoch seconds converted.

    >>> from datetime import timedelta, timezone
    >>> rfc3339(datetime(2026, 1, 1, 14, tzinfo=timezone(timedelta(hours=2))))
    '2026-01-01T12:00:00+00:00'
    >>> rfc3339(1767268800.5), rfc3339(None)
    ('2026-01-01T12:00:00.500000+00:00', None)
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    return datetime.fromtimestamp(value, UTC).isoformat()


Timestamp = Annotated[
    datetime,
    _SpelledAs(datetime, RFC3339_PATTERN, "must be an RFC 3339 date-time string with an offset "
                                          "(e.g. 2024-05-01T12:00:00Z or +02:00)"),
    AfterValidator(_require_offset),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}, mode="validation"),
]
"""An RFC 3339 timestamp with an offset; naive values, epoch numbers and other spellings are rejected."""
Uuid = Annotated[
    uuid.UUID,
    _SpelledAs(uuid.UUID, UUID_PATTERN, "must be a UUID string like 0b6f1f7e-3c55-4f0e-9d1a-2f3b4c5d6e7f"),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID_PATTERN}, mode="validation"),
]
"""A UUID, spelled on the wire in its hyphenated form."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""A learner or model name."""
Ident = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
"""An id, a version or a source: 1 to ``MAX_NAME`` characters, any content."""
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
"""A short lower-case machine tag."""
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
"""Free text up to ``MAX_TEXT`` characters."""
Finite = StrictFloat
"""A finite JSON number (ints are accepted and become floats; strings and booleans are not)."""
Probability = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
"""A finite number in [0, 1]."""
Count = Annotated[StrictInt, Field(ge=0)]
"""A non-negative integer."""

ShortStr = Annotated[StrictStr, StringConstraints(max_length=MAX_STR_VALUE)]

# Strict members tried left to right keep JSON types exactly: `true` stays a bool
# (bool is an int subclass in Python), `1` stays an int, `1.5` and `1.0` stay floats.
FeatureValue = Annotated[StrictBool | StrictInt | StrictFloat | ShortStr, Field(union_mode="left_to_right")]
"""One feature value: a bool, an int, a finite float or a short string."""
Label = FeatureValue
"""A target or a prediction: same types as a feature value."""
FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY)]
Features = Annotated[dict[FeatureName, FeatureValue], Field(max_length=MAX_FEATURES)]
"""A flat map of feature name to value, at most ``MAX_FEATURES`` entries."""
Metrics = Annotated[dict[FeatureName, Finite], Field(max_length=MAX_FEATURES)]
"""A flat map of metric name to finite number."""

WIRE_CONFIG = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def filled_in_python(**kwargs: Any) -> Any:
    """A field every record on the wire must carry, which ``Envelope.__init__`` fills in when omitted.

    The validator (which every reader uses) sees no default, so the field is required on
    the wire and in the exported JSON Schema; type checkers see a default (the call is
    not a field specifier to them), so Python callers may leave the field out.
    """
    return Field(**kwargs)


class WireModel(BaseModel):
    """Base of every model on the wire, nested parts included: frozen, closed, finite."""

    model_config = WIRE_CONFIG


class Envelope(WireModel):
    """Fields every event carries; subclasses pin ``schema`` to their own id.

    ``schema`` is ``"<type>/<major>"``. A new major version is a new class: readers
    reject majors they do not know instead of misreading them.

    One rule for the wire: every record carries ``schema``, ``event_id`` and
    ``occurred_at``, and a reader refuses a record without them (an id made up at
    read time would differ on every read, and dedup by it would mean nothing).
    Writers fill them in for their callers: constructing an event in Python gives
    the class's ``schema``, a new ``event_id`` and the current time when they are
    not passed; the HTTP gateway does the same for request bodies.
    """

    model_config = ConfigDict(**WIRE_CONFIG, populate_by_name=True)

    SCHEMA_ID: ClassVar[str]

    # BaseModel.schema() exists, hence the attribute name; the wire name is "schema".
    schema_: str = Field(alias="schema")
    event_id: Uuid = filled_in_python()
    occurred_at: Timestamp = filled_in_python()
    source: str = Field(min_length=1, max_length=MAX_NAME)

    FILLED_IN: ClassVar[dict[str, Callable[[], object]]] = {"event_id": uuid.uuid4, "occurred_at": utc_now}
    """Fields that Python construction fills in when they are not given (see :func:`filled_in_python`)."""

    def __init__(self, /, **data: Any) -> None:
        # Only construction in Python comes through here; readers validate JSON or dicts
        # directly (`parse_event`), where a missing schema, id or time is an error.
        if "schema" not in data and "schema_" not in data:
            data["schema"] = self.SCHEMA_ID
        for name, make in self.FILLED_IN.items():
            if name not in data:
                data[name] = make()
        super().__init__(**data)

    # Marks this __init__ as pydantic's own, so validation (`model_validate_json`, every
    # reader) goes straight to the validator instead of through here: no filling in on the
    # wire, and no extra Python call per event.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # The literal and the class attribute are written side by side; catch a typo at import.
        field = cls.model_fields["schema_"]
        if get_origin(field.annotation) is not Literal:
            return  # an intermediate base, not an event
        if (getattr(cls, "SCHEMA_ID", None),) != get_args(field.annotation):
            raise TypeError(f"{cls.__name__}.SCHEMA_ID must equal the schema field's literal {field.annotation}")

    def to_json(self) -> bytes:
        """The event as compact UTF-8 JSON, wire names (``schema``) included."""
        return self.__pydantic_serializer__.to_json(self, by_alias=True)

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-compatible dict with wire names."""
        return self.model_dump(mode="json", by_alias=True)
