"""The owner's local mirror of a partition's dedup window (pure: the store is a dict here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streams.dedup import DedupCache


class WindowStore:
    """The store's side of the window: ids in commit order, trimmed to ``window``."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.ids: dict[tuple[str, int], list[str]] = {}

    async def recent_ids(self, topic: str, partition: int) -> list[str]:
        return list(self.ids.get((topic, partition), []))

    async def seen(self, topic: str, partition: int, event_ids: Sequence[str]) -> list[bool]:
        known = set(self.ids.get((topic, partition), []))
        return [i in known for i in event_ids]

    async def commit(
        self, topic: str, partition: int, *, snapshot: bytes, offset: int, event_ids: Sequence[str],
        statuses: Mapping[str, Mapping[str, Any]],
    ) -> None:
        ids = self.ids.setdefault((topic, partition), []) + list(event_ids)
        self.ids[(topic, partition)] = ids[-self.window :]


async def test_the_mirror_trims_like_the_store_and_answers_alone() -> None:
    store = WindowStore(window=10)
    store.ids[("t", 0)] = ["old-1", "old-2"]
    cache = DedupCache(store, window=10)  # type: ignore[arg-type]
    await cache.warm("t", 0)
    for k in range(5):  # 2 + 5 x 4 ids: the oldest 12 fall out, several commits in a row
        await cache.commit("t", 0, snapshot=b"", offset=k, event_ids=[f"{k}-{i}" for i in range(4)], statuses={})
    assert list(cache._ids[("t", 0)]) == store.ids[("t", 0)] == [f"{k}-{i}" for k in (2, 3, 4) for i in range(4)][-10:]
    store.ids[("t", 0)] = []  # from here on only the mirror can answer
    assert await cache.seen("t", 0, ["old-1", "1-3", "2-2", "4-3", "new"]) == [False, False, True, True, False]


async def test_an_unwarmed_partition_asks_the_store() -> None:
    store = WindowStore(window=10)
    store.ids[("t", 1)] = ["a"]
    cache = DedupCache(store, window=10)  # type: ignore[arg-type]
    assert await cache.seen("t", 1, ["a", "b"]) == [True, False]


def test_the_consumer_refuses_a_processor_wired_to_another_window() -> None:
    import pytest

    from learners.config import LearnersConfig
    from streams.config import FeedbackConfig, KafkaConfig
    from streams.consumer import FeedbackConsumer
    from streams.feedback import FeedbackProcessor

    store = WindowStore(window=10)
    window = DedupCache(store, window=10)  # type: ignore[arg-type]
    learners = LearnersConfig.from_mapping({"learners": {"sea": {"task": "binary"}}})

    def consumer(processor_store: object, collect: bool) -> FeedbackConsumer:
        processor = FeedbackProcessor(learners=learners, store=processor_store, joins=None,  # type: ignore[arg-type]
                                      source="t", collect_samples=collect)
        return FeedbackConsumer(kafka=KafkaConfig(), config=FeedbackConfig(), processor=processor, store=window,
                                snapshot_key=b"k" * 32)

    assert consumer(window, False).store is window
    with pytest.raises(ValueError, match="DedupCache"):
        consumer(store, False)  # the raw store: lookups would bypass the local window
    with pytest.raises(ValueError, match="sample sink"):
        consumer(window, True)  # would build samples nobody stores
