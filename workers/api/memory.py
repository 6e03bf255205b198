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
from workers.api.ports import LearnerNotDeclared, NoServedVersion, Record, ServedAnswer


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


class MemoryServed:
    """A fixed model (anything with River's ``predict_one``/``predict_proba_one``) under a version."""

    def __init__(self, version: str, model: Any, *, classifier: bool = True) -> None:
        self.version = version
        self.model = model
        self.classifier = classifier

    def predict(self, rows: Sequence[dict[str, Any]]) -> list[ServedAnswer]:
        if not self.classifier:
            return [ServedAnswer(self.model.predict_one(x), None) for x in rows]
        out = []
        for x in rows:
            proba = dict(self.model.predict_proba_one(x) or {})
            out.append(ServedAnswer(max(proba, key=proba.__getitem__) if proba else None, proba))
        return out


class MemoryModels:
    """Served versions set by hand: ``declared`` learners, ``serving[name]`` what each one serves."""

    def __init__(self, declared: Sequence[str], serving: dict[str, MemoryServed] | None = None) -> None:
        self.declared = list(declared)
        self.serving = dict(serving or {})

    def served(self, learner: str) -> MemoryServed:
        if learner not in self.declared:
            raise LearnerNotDeclared(f"learner {learner!r} is not declared in the learners file")
        if learner not in self.serving:
            raise NoServedVersion(f"learner {learner!r} has no model yet")
        return self.serving[learner]

    def versions(self) -> dict[str, dict[str, Any]]:
        return {n: {"version": s.version if (s := self.serving.get(n)) else None} for n in self.declared}
