"""History points from learner statuses: which metric, which time (pure code; Redis is in the integration tests)."""

from __future__ import annotations

import asyncio
from typing import Any

from workers.api.history import HistorySampler, Point, main_metric, point_of


def test_the_charted_metric_is_the_first_present_of_the_pages_order() -> None:
    assert main_metric({"mae": 2.0, "rolling_mae": 1.5}) == ("rolling_mae", 1.5)
    assert main_metric({"accuracy": True}) is None  # a flag is not a value
    assert main_metric({"f1": 0.9}) is None


def test_a_points_time_is_when_the_learner_last_learned_in_either_time_format() -> None:
    st: dict[str, Any] = {"n_learned": 10, "metrics": {"accuracy": 0.5}}
    assert point_of({**st, "learned_at": "2026-01-01T00:00:10+00:00"}, now=0.0) == Point(
        1_767_225_610.0, 10, "accuracy", 0.5)
    assert point_of({**st, "learned_at": None, "snapshot_at": 20.0}, now=0.0) == Point(20.0, 10, "accuracy", 0.5)
    assert point_of(st, now=30.0) == Point(30.0, 10, "accuracy", 0.5)
    assert point_of({**st, "n_learned": "10"}, now=0.0) is None


class Recorder:
    def __init__(self) -> None:
        self.appended: list[dict[str, Point]] = []

    async def append(self, points: dict[str, Point]) -> int:
        self.appended.append(points)
        return len(points)


def test_the_sampler_appends_one_point_per_learner_with_a_metric() -> None:
    async def statuses() -> list[dict[str, Any]]:
        return [{"name": "a", "n_learned": 3, "metrics": {"rolling_accuracy": 0.7}, "learned_at": 5.0},
                {"name": "b", "n_learned": 0, "metrics": {}}, {"n_learned": 1, "metrics": {"mae": 1.0}}]

    rec = Recorder()
    sampler = HistorySampler(statuses, rec, every_s=1.0)  # type: ignore[arg-type]
    assert asyncio.run(sampler.sample(now=9.0)) == 1
    assert rec.appended == [{"a": Point(5.0, 3, "rolling_accuracy", 0.7)}]


def test_the_sampler_keeps_going_when_redis_fails_and_stops_when_told() -> None:
    calls = 0

    async def statuses() -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("redis went away")
        stop.set()
        return []

    stop = asyncio.Event()
    sampler = HistorySampler(statuses, Recorder(), every_s=0.01)  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(sampler.run(stop), timeout=10))
    assert calls == 3 and not sampler.failing
