"""Learner history in the real Redis: the capped lists, and the gateway keeping them across its restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.util import wait_for
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.history import LearnerHistory, Point
from workers.api.keys import hash_key, new_key
from workers.api.server import BackgroundServer
from workers.feedback.redis_store import RedisStore
from workers.settings import Settings

pytestmark = pytest.mark.integration

READER = new_key()


@pytest.fixture
async def history(settings: Settings) -> AsyncIterator[LearnerHistory]:
    client = aioredis.Redis.from_url(settings.redis.url)
    yield LearnerHistory(client, prefix=settings.redis.key_prefix, limit=5)
    await client.aclose()


def pt(n: int, value: float = 0.5) -> Point:
    return Point(1_700_000_000.0 + n, n, "rolling_accuracy", value)


async def test_a_point_is_added_once_per_count_the_list_is_capped_and_a_reset_starts_over(
    history: LearnerHistory,
) -> None:
    assert await history.append({"a": pt(10), "b": pt(3)}) == 2
    assert await history.append({"a": pt(10), "b": pt(3)}) == 0  # nothing learned since: a second gateway's sample
    for n in range(11, 18):
        await history.append({"a": pt(n, n / 100)})
    assert [p.n for p in await history.points("a")] == [13, 14, 15, 16, 17]  # the newest 5
    assert (await history.points("a"))[-1] == pt(17, 0.17)
    await history.append({"a": pt(4)})  # the learner's count went back: its state was reset
    assert [p.n for p in await history.points("a")] == [4]
    assert [p.n for p in await history.points("b")] == [3]
    assert await history.points("nobody") == []


def status(n: int) -> dict[str, Any]:
    return {"name": "sea", "task": "binary", "model": "logistic_regression", "n_learned": n,
            "metrics": {"accuracy": 0.8, "rolling_accuracy": 0.6 + n / 10_000}, "learned_at": 1_700_000_000.0 + n}


async def test_the_gateway_samples_the_statuses_and_serves_them_after_its_restart(
    settings: Settings, store: RedisStore
) -> None:
    api = ApiConfig(keys=[ApiKey(name="dash", sha256=hash_key(READER))], history_every_s=0.05)
    headers = {"X-API-Key": READER}

    async def history_of(url: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            res = await client.get("/v1/learners/sea/history", headers=headers)
        assert res.status_code == 200, res.text
        points: list[dict[str, Any]] = res.json()["points"]
        return points

    with BackgroundServer(create_app(settings, api=api)) as server:
        for step in range(1, 9):
            # What the feedback worker writes with a snapshot; the gateway's sampler picks it up.
            await store.commit("t", 0, snapshot=b"", offset=step, event_ids=[], statuses={"sea": status(100 * step)})

            async def sampled(n: int = 100 * step) -> bool:
                return any(p["n"] == n for p in await history_of(server.url))

            await wait_for(sampled, timeout=30, what=f"the point at {100 * step} events")
    with BackgroundServer(create_app(settings, api=api)) as restarted:
        points = await history_of(restarted.url)
    assert [p["n"] for p in points] == [100 * step for step in range(1, 9)]
    assert points[0] == {"at": "2023-11-14T22:15:00+00:00", "n": 100, "metric": "rolling_accuracy", "value": 0.61}
