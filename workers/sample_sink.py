"""The SQL feedback store as the feedback loop's sample sink."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streams.feedback import LearnedSample
from workers.store.feedback import FeedbackStore
from workers.store.samples import SampleIn


class SqlSampleSink:
    """Batched, idempotent inserts (by event_id) in a thread, off the event loop."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store
        self.stored = 0

    async def add_samples(self, samples: Sequence[LearnedSample]) -> None:
        rows = [
            SampleIn(
                event_id=s.event_id, learner=s.learner, subject_id=s.subject_id, text=s.text,
                features=s.features, label=s.label, weight=s.weight, channel=s.channel,
                source=s.source, occurred_at=s.occurred_at,
            )
            for s in samples
        ]
        self.stored += await asyncio.to_thread(self.store.add_many, rows)
