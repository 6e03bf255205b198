"""What the feedback pipeline hands back: per-batch results, running totals, and learned samples.

Plain data, apart from :class:`~streams.feedback.PartitionState` (which snapshots pickle by its
module path, so it stays in ``streams.feedback``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas import DeadLetter, Envelope
from streams.partitioning import Forward

__all__ = ["BatchResult", "ConsumerStats", "LearnedSample"]


@dataclass(frozen=True)
class LearnedSample:
    """A feedback event as learned: its input (after the join) and the label it was mapped to."""

    event_id: str
    learner: str
    subject_id: str | None
    text: str | None
    features: dict[str, Any] | None
    label: Any
    weight: float
    channel: str
    source: str
    occurred_at: datetime


@dataclass
class BatchResult:
    """What one batch produced: events to send and counts to export."""

    outputs: list[Envelope] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)  # records whose learner another partition owns
    learned: int = 0
    duplicates: int = 0
    deadlettered: Counter[str] = field(default_factory=Counter)
    drifts: int = 0
    samples: list[LearnedSample] = field(default_factory=list)

    def add_deadletter(self, dl: DeadLetter) -> None:
        self.outputs.append(dl)
        self.deadlettered[dl.reason] += 1


@dataclass
class ConsumerStats:
    """Running totals for metrics and the live view (not crash-consistent; the snapshots are)."""

    batches: int = 0
    records: int = 0
    learned: int = 0
    duplicates: int = 0
    drifts: int = 0
    snapshots: int = 0
    stored: int = 0
    deadlettered: dict[str, int] = field(default_factory=dict)
    last_batch_s: float = 0.0

    def add(self, r: BatchResult) -> None:
        self.learned += r.learned
        self.stored += len(r.samples)
        self.duplicates += r.duplicates
        self.drifts += r.drifts
        for k, v in r.deadlettered.items():
            self.deadlettered[k] = self.deadlettered.get(k, 0) + v
