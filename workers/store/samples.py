"""Feedback samples as plain values: what the sink writes and what a training window reads.

No SQL here, so dataset code and its tests work on plain lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

FeatureValue = bool | int | float | str
LabelValue = bool | int | float | str


class SampleLike(Protocol):
    """What the store reads of a sample to write: a :class:`SampleIn`, or the feedback loop's own
    ``LearnedSample`` as it is (no copy on the hot path)."""

    @property
    def event_id(self) -> str: ...
    @property
    def learner(self) -> str: ...
    @property
    def label(self) -> LabelValue: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def source(self) -> str: ...
    @property
    def subject_id(self) -> str | None: ...
    @property
    def text(self) -> str | None: ...
    @property
    def features(self) -> Mapping[str, FeatureValue] | None: ...
    @property
    def weight(self) -> float: ...
    @property
    def channel(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class SampleIn:
    """One labelled example to store: the event's input (after the join) and its mapped label.

    ``label`` and ``weight`` are what the learner's label mapping made of the
    event's label, rating or signal. ``occurred_at`` must be timezone-aware.

    >>> from datetime import datetime, timezone
    >>> s = SampleIn(event_id="e-1", learner="ctr", text="great", label=True, source="web",
    ...              occurred_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    >>> s.weight, s.channel
    (1.0, 'explicit')
    """

    event_id: str
    learner: str
    label: LabelValue
    occurred_at: datetime
    source: str
    subject_id: str | None = None
    text: str | None = None
    features: Mapping[str, FeatureValue] | None = None
    weight: float = 1.0
    channel: str = "explicit"

    def __post_init__(self) -> None:
        if self.text is None and self.features is None:
            raise ValueError(f"sample {self.event_id}: needs text or features")
        if self.occurred_at.tzinfo is None or self.occurred_at.utcoffset() is None:
            raise ValueError(f"sample {self.event_id}: occurred_at must be timezone-aware")


@dataclass(frozen=True, kw_only=True)
class Sample(SampleIn):
    """A stored sample, as a training window returns it (times in UTC)."""

    stored_at: datetime
