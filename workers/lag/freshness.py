"""Model freshness: how far a learner's model trails the newest event produced for it.

A learner's status in Redis (written with its snapshot) holds ``last_event_at``,
the event time of the newest event it learned, and ``offset``, the last record
of its partition it processed. The newest event produced is the last record of
that partition (log end - 1). Freshness is then

- 0 when the learner has processed its partition up to the log end: there is
  nothing newer for it to learn;
- otherwise newest produced event time - ``last_event_at`` (never negative).

Both times are *event* times (the envelope's ``occurred_at``), so producer and
broker clocks never enter, and replayed history is not mistaken for staleness.
When the newest record is not an envelope its Kafka timestamp stands in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.envelope import rfc3339


@dataclass(frozen=True)
class Freshness:
    learner: str
    topic: str | None
    partition: int | None
    last_event_at: datetime | None  # event time of the newest event learned
    newest_event_at: datetime | None  # event time of the newest event produced on the partition
    behind: int | None  # records on the partition the learner has not processed yet
    freshness_s: float | None
    stale: bool  # freshness_s over the configured bound

    def as_json(self) -> dict[str, Any]:
        return {
            "learner": self.learner,
            "topic": self.topic,
            "partition": self.partition,
            "last_event_at": rfc3339(self.last_event_at),
            "newest_event_at": rfc3339(self.newest_event_at),
            "behind": self.behind,
            "freshness_s": self.freshness_s,
            "stale": self.stale,
        }


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 string (or epoch seconds) as an aware datetime; None if it is neither.

    >>> parse_time("2026-01-01T00:00:05Z").isoformat()
    '2026-01-01T00:00:05+00:00'
    >>> parse_time("yesterday") is None
    True
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def event_time(value: bytes | None, timestamp_ms: int | None) -> datetime | None:
    """The event time of a record: its envelope's ``occurred_at``, else its Kafka timestamp.

    >>> event_time(b'{"occurred_at": "2026-01-01T00:00:00+00:00"}', 0).isoformat()
    '2026-01-01T00:00:00+00:00'
    >>> event_time(b'not json', 1_000).isoformat()
    '1970-01-01T00:00:01+00:00'
    """
    if value:
        try:
            doc = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if isinstance(doc, dict):
            t = parse_time(doc.get("occurred_at"))
            if t is not None:
                return t
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)


def learner_freshness(
    status: Mapping[str, Any], *, log_end: int | None, newest_event_at: datetime | None, bound_s: float
) -> Freshness:
    """Freshness of one learner from its Redis status and its partition's log end and newest event.

    >>> st = {"name": "sea", "topic": "t", "partition": 0, "offset": 9,
    ...       "last_event_at": "2026-01-01T00:00:00+00:00"}
    >>> learner_freshness(st, log_end=10, newest_event_at=None, bound_s=60).freshness_s
    0.0
    >>> f = learner_freshness(st, log_end=15, newest_event_at=parse_time("2026-01-01T00:01:30Z"), bound_s=60)
    >>> f.behind, f.freshness_s, f.stale
    (5, 90.0, True)
    """
    last = parse_time(status.get("last_event_at"))
    offset = status.get("offset")
    partition = status.get("partition")
    behind: int | None = None
    if log_end is not None and isinstance(offset, int) and not isinstance(offset, bool):
        behind = max(0, log_end - (offset + 1))
    fresh: float | None
    if behind == 0:
        fresh = 0.0
    elif last is None or newest_event_at is None:
        fresh = None
    else:
        fresh = max(0.0, (newest_event_at - last).total_seconds())
    return Freshness(
        learner=str(status.get("name", "?")),
        topic=status.get("topic") if isinstance(status.get("topic"), str) else None,
        partition=partition if isinstance(partition, int) and not isinstance(partition, bool) else None,
        last_event_at=last,
        newest_event_at=newest_event_at,
        behind=behind,
        freshness_s=fresh,
        stale=fresh is not None and fresh > bound_s,
    )
