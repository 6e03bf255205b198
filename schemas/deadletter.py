"""The dead-letter event: a record we could not process, kept byte for byte with its reason."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import StringConstraints, field_validator

from schemas.envelope import (
    MAX_COMMENT,
    MAX_STR_VALUE,
    TAG_PATTERN,
    Count,
    Envelope,
    Tag,
    Timestamp,
    WireModel,
    filled_in_python,
    utc_now,
)
from schemas.errors import InvalidEvent

MAX_TOPIC = 249
"""Kafka's own limit on a topic name."""

FALLBACK_REASON = "processing_error"
"""Reason of a dead letter whose error is not an ``InvalidEvent`` and that names none."""

_TAG = re.compile(TAG_PATTERN)
_NOT_TAG_CHARS = re.compile(r"[^a-z0-9_]+")


def _as_reason(reason: str) -> str:
    # Dead-lettering must not fail because somebody raised InvalidEvent(reason="Bad Thing").
    if _TAG.match(reason):
        return reason
    cleaned = _NOT_TAG_CHARS.sub("_", reason.lower()).strip("_")[:64]
    return cleaned if _TAG.match(cleaned) else FALLBACK_REASON


class ErrorInfo(WireModel):
    """Why a record failed: the exception's type name and its message (truncated, never rejected)."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=MAX_STR_VALUE)]
    message: Annotated[str, StringConstraints(max_length=MAX_COMMENT)]

    @field_validator("message", mode="before")
    @classmethod
    def _truncate(cls, value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_COMMENT:
            return value[: MAX_COMMENT - 1] + "…"
        return value

    @classmethod
    def from_exception(cls, error: BaseException) -> ErrorInfo:
        """Describe ``error`` by its class name and message."""
        return cls(type=type(error).__name__[:MAX_STR_VALUE], message=str(error))


class DeadLetter(Envelope):
    """A record that failed, with the original bytes (base64), where it came from and why.

    >>> from schemas import DeadLetter, InvalidEvent, parse_event
    >>> raw = b'{"schema": "feedback/1", "learner": 42}'
    >>> try:
    ...     parse_event(raw)
    ... except InvalidEvent as error:
    ...     dl = DeadLetter.from_record(topic="learnloop.feedback", partition=3, offset=1017, key=b"ctr",
    ...                                 value=raw, error=error, source="feedback-agent")
    >>> dl.reason, dl.key, dl.payload_bytes() == raw
    ('validation', 'ctr', True)
    >>> parse_event(dl.to_json(), DeadLetter) == dl
    True
    """

    SCHEMA_ID: ClassVar[str] = "deadletter/1"
    schema_: Literal["deadletter/1"] = filled_in_python(alias="schema")
    source_topic: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOPIC)]
    partition: Count
    offset: Count
    key: str | None = None
    payload: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
    reason: Tag
    error: ErrorInfo
    failed_at: Timestamp = filled_in_python()

    FILLED_IN: ClassVar[dict[str, Callable[[], object]]] = {**Envelope.FILLED_IN, "failed_at": utc_now}

    @classmethod
    def from_record(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        error: BaseException | ErrorInfo,
        source: str,
        reason: str | None = None,
    ) -> DeadLetter:
        """Build the dead letter of a Kafka record; ``reason`` defaults to the ``InvalidEvent``'s own.

        The key is decoded as UTF-8, invalid bytes shown as ``\\xNN`` escapes so that it
        stays readable; the value is kept exactly, as base64.
        A missing value (a tombstone) becomes an empty payload.
        """
        if reason is None:
            reason = error.reason if isinstance(error, InvalidEvent) else FALLBACK_REASON
        return cls(
            source=source,
            source_topic=topic,
            partition=partition,
            offset=offset,
            key=None if key is None else key.decode("utf-8", errors="backslashreplace"),
            payload=base64.b64encode(value or b"").decode("ascii"),
            reason=_as_reason(reason),
            error=error if isinstance(error, ErrorInfo) else ErrorInfo.from_exception(error),
        )

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers with the reason and the source coordinates, for tools that filter without decoding.

        ``kcat -J`` shows them; so does any consumer that reads headers.

        >>> dl = DeadLetter.from_record(topic="learnloop.feedback", partition=3, offset=1017, key=None,
        ...                             value=b"{", error=ValueError("bad"), source="agent", reason="invalid_json")
        >>> [name for name, _ in dl.headers()]
        ['reason', 'source_topic', 'source_partition', 'source_offset', 'error_type']
        >>> dict(dl.headers())["source_offset"], dict(dl.headers())["error_type"]
        (b'1017', b'ValueError')
        """
        return [
            ("reason", self.reason.encode()),
            ("source_topic", self.source_topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
            ("error_type", self.error.type.encode()),
        ]

    def payload_bytes(self) -> bytes:
        """The original record value, byte for byte."""
        return base64.b64decode(self.payload, validate=True)
