"""In-memory stand-ins for the gateway's ports, for tests of request handling and for demos.

>>> import asyncio
>>> from workers.api.ports import Record
>>> publisher = MemoryPublisher()
>>> asyncio.run(publisher.publish([Record("learnloop.feedback", b"ctr", b"{}")]))
>>> publisher.records[0].key
b'ctr'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.errors import StoreUnavailable
from workers.api.ports import Record


class MemoryPublisher:
    """Records what it is asked to publish; ``failure`` makes every call raise it instead."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.failure: BaseException | None = None

    async def publish(self, records: Sequence[Record]) -> None:
        if self.failure is not None:
            raise self.failure
        self.records.extend(records)

    async def ping(self) -> None:
        if self.failure is not None:
            raise self.failure


class MemoryStore:
    """Learner statuses and drift events held in lists; ``down`` makes it act unreachable."""

    def __init__(self, statuses: Sequence[dict[str, Any]] = (), drifts: Sequence[dict[str, Any]] = ()) -> None:
        self.statuses = list(statuses)
        self.drifts = list(drifts)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("redis unavailable (memory store marked down)")

    async def learner_statuses(self) -> list[dict[str, Any]]:
        self._check()
        return sorted(self.statuses, key=lambda s: str(s.get("name")))

    async def recent_drifts(self, limit: int = 20) -> list[dict[str, Any]]:
        self._check()
        return self.drifts[-limit:][::-1]

    async def ping(self) -> bool:
        self._check()
        return True
