"""The SQL feedback store as the feedback loop's sample sink."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streams.feedback import LearnedSample
from workers.store.feedback import FeedbackStore


class SqlSampleSink:
    """Batched, idempotent inserts (by event_id) in a thread, off the event loop."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store

    async def add_samples(self, samples: Sequence[LearnedSample]) -> None:
        # A LearnedSample is what the store reads (workers.store.samples.SampleLike): no copy.
        await asyncio.to_thread(self.store.add_many, samples)
