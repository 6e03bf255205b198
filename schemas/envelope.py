"""The envelope every event shares, the size limits, and the constrained types.

Limits are part of the contract: a producer that respects them is never
dead-lettered for size, and a consumer never holds an unbounded event.
Numbers on the wire are JSON numbers (a string "4.5" is not a rating) and
must be finite: ``NaN`` and ``±Infinity`` are rejected everywhere.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

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


Timestamp = Annotated[datetime, AfterValidator(_require_offset)]
"""An RFC 3339 timestamp with an offset; naive values are rejected."""

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


class WireModel(BaseModel):
    """Base of every model on the wire, nested parts included: frozen, closed, finite."""

    model_config = WIRE_CONFIG


class Envelope(WireModel):
    """Fields every event carries; subclasses pin ``schema`` to their own id.

    ``schema`` is ``"<type>/<major>"``. A new major version is a new class: readers
    reject majors they do not know instead of misreading them.
    """

    model_config = ConfigDict(**WIRE_CONFIG, populate_by_name=True)

    SCHEMA_ID: ClassVar[str]

    # BaseModel.schema() exists, hence the attribute name; the wire name is "schema".
    schema_: str = Field(alias="schema")
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: Timestamp = Field(default_factory=utc_now)
    source: str = Field(min_length=1, max_length=MAX_NAME)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # The literal and the class attribute are written side by side; catch a typo at import.
        field = cls.model_fields["schema_"]
        if field.is_required():
            return  # an intermediate base, not an event
        if getattr(cls, "SCHEMA_ID", None) != field.default:
            raise TypeError(f"{cls.__name__}.SCHEMA_ID must equal the schema field's default {field.default!r}")

    def to_json(self) -> bytes:
        """The event as compact UTF-8 JSON, wire names (``schema``) included."""
        return self.__pydantic_serializer__.to_json(self, by_alias=True)

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-compatible dict with wire names."""
        return self.model_dump(mode="json", by_alias=True)
