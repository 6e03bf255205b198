"""A local mirror of each owned partition's dedup window, so the hot path never asks Redis.

A partition has one owner at a time, so once the owner has loaded the stored
window (at assignment) every id that can be in it is either loaded or one the
owner itself committed. ``seen`` is then a set lookup instead of a round trip
carrying thousands of ids per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any

from streams.ports import PartitionStateStore


class DedupCache:
    """Wraps a ``PartitionStateStore``; same protocol, plus ``warm``/``forget`` per partition."""

    def __init__(self, inner: PartitionStateStore, *, window: int) -> None:
        self.inner = inner
        self.window = window
        self._ids: dict[tuple[str, int], dict[str, None]] = {}  # insertion order = commit order

    async def warm(self, topic: str, partition: int) -> None:
        ids = await self.inner.recent_ids(topic, partition)
        self._ids[(topic, partition)] = dict.fromkeys(ids)

    def forget(self, topic: str, partition: int) -> None:
        self._ids.pop((topic, partition), None)

    async def load(self, topic: str, partition: int) -> bytes | None:
        return await self.inner.load(topic, partition)

    async def recent_ids(self, topic: str, partition: int) -> list[str]:
        return await self.inner.recent_ids(topic, partition)

    async def seen(self, topic: str, partition: int, event_ids: Sequence[str]) -> list[bool]:
        known = self._ids.get((topic, partition))
        if known is None:
            return await self.inner.seen(topic, partition, event_ids)
        return [i in known for i in event_ids]

    async def commit(
        self,
        topic: str,
        partition: int,
        *,
        snapshot: bytes,
        offset: int,
        event_ids: Sequence[str],
        statuses: Mapping[str, Mapping[str, Any]],
    ) -> None:
        await self.inner.commit(
            topic, partition, snapshot=snapshot, offset=offset, event_ids=event_ids, statuses=statuses
        )
        known = self._ids.get((topic, partition))
        if known is not None:
            known.update(dict.fromkeys(event_ids))
            if (excess := len(known) - self.window) > 0:  # the same trim the store applies
                # Rebuilt, not deleted from the front one by one: deleted slots stay in a dict until it
                # resizes, so each next(iter()) would rescan them and the trim would grow quadratic.
                self._ids[(topic, partition)] = dict.fromkeys(islice(known, excess, None))

    async def publish_progress(
        self,
        group: str,
        topic: str,
        partition: int,
        *,
        position: int,
        highwater: int | None,
        counters: Mapping[str, int] | None = None,
    ) -> None:
        await self.inner.publish_progress(
            group, topic, partition, position=position, highwater=highwater, counters=counters
        )

    async def publish_failure(
        self, group: str, topic: str, partition: int, *, position: int, reason: str, message: str
    ) -> None:
        await self.inner.publish_failure(
            group, topic, partition, position=position, reason=reason, message=message
        )
