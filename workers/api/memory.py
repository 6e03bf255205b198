"""In-memory stand-ins for the gateway's ports, for tests of request handling and for demos.

>>> import asyncio
>>> from workers.api.ports import Record
>>> publisher = MemoryPublisher()
>>> asyncio.run(publisher.publish([Record("learnloop.feedback", b"ctr", b"{}")]))
>>> publisher.records[0].key
b'ctr'
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from schemas.errors import StoreUnavailable
from workers.api.history import Point
from workers.api.ports import LearnerUnknown, NoServedVersion, Record


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


class MemoryPrediction(NamedTuple):
    learner: str
    prediction_id: str
    model_version: str
    label: Any = None
    probabilities: dict[Any, float] | None = None
    value: float | None = None


class MemoryServed:
    """A fixed model (anything with River's ``predict_one``/``predict_proba_one``) under a version."""

    def __init__(self, version: str, model: Any, *, classifier: bool = True) -> None:
        self.version = version
        self.model = model
        self.classifier = classifier


class MemoryModels:
    """Served versions set by hand: ``declared`` learners, ``serving[name]`` what each one serves.

    ``logged`` collects ``(prediction, features, text, subject_id)`` for every prediction asked to be logged.
    """

    def __init__(self, declared: Sequence[str], serving: dict[str, MemoryServed] | None = None) -> None:
        self.declared = list(declared)
        self.serving = dict(serving or {})
        self.logged: list[tuple[MemoryPrediction, Mapping[str, Any] | None, str | None, str | None]] = []
        self._ids = itertools.count(1)

    def check(self, learner: str) -> None:
        if learner not in self.serving:
            if learner not in self.declared:
                raise LearnerUnknown(f"unknown learner {learner!r}: it is not in the learners file")
            raise NoServedVersion(f"learner {learner!r} has no model yet")

    def predict(
        self,
        learner: str,
        inputs: Sequence[tuple[Mapping[str, Any] | None, str | None]],
        *,
        subject_ids: Sequence[str | None],
        log: bool,
    ) -> list[MemoryPrediction]:
        self.check(learner)
        served = self.serving[learner]
        out = []
        for (features, text), subject_id in zip(inputs, subject_ids, strict=True):
            x = {**(features or {}), **({"__text__": text} if text is not None else {})}
            pid = f"p-{next(self._ids)}"
            if served.classifier:
                proba = dict(served.model.predict_proba_one(x) or {})
                label = max(proba, key=proba.__getitem__) if proba else None
                p = MemoryPrediction(learner, pid, served.version, label, proba)
            else:
                p = MemoryPrediction(learner, pid, served.version, value=float(served.model.predict_one(x)))
            if log:
                self.logged.append((p, features, text, subject_id))
            out.append(p)
        return out

    def versions(self) -> dict[str, dict[str, Any]]:
        names = [*self.declared, *sorted(set(self.serving) - set(self.declared))]
        return {n: {"version": s.version if (s := self.serving.get(n)) else None} for n in names}


class MemoryHistory:
    """Learners' history points held in a dict; ``down`` makes it act unreachable."""

    def __init__(self, points: dict[str, list[Point]] | None = None) -> None:
        self.by_learner = dict(points or {})
        self.down = False

    async def points(self, learner: str) -> list[Point]:
        if self.down:
            raise StoreUnavailable("redis unavailable (memory history marked down)")
        return list(self.by_learner.get(learner, []))
