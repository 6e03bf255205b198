"""The published-model store on a real Redis: versions only grow, K are kept, superseded ones expire."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from workers.serving.model_store import RedisModelStore

pytestmark = pytest.mark.integration


@pytest.fixture
async def models(redis_url: str, unique: str) -> AsyncIterator[RedisModelStore]:
    client = aioredis.Redis.from_url(redis_url)
    store = RedisModelStore(client, prefix=f"test:{unique}:", keep=3, superseded_ttl_s=60)
    yield store
    keys = [k async for k in client.scan_iter(match=f"test:{unique}:*")]
    if keys:
        await client.delete(*keys)
    await store.close()


async def test_versions_only_grow_and_a_stored_version_is_never_rewritten(models: RedisModelStore) -> None:
    assert await models.fetch_latest("sea") is None
    assert await models.publish("sea", 10, b"ten") == (True, 10)
    assert await models.publish("sea", 10, b"another ten") == (False, 10)  # refused: it says the latest
    assert await models.publish("sea", 7, b"seven") == (False, 10)
    assert await models.fetch("sea", 10) == b"ten"
    assert await models.fetch("sea", 7) is None
    assert await models.publish("sea", 12, b"twelve") == (True, 12)
    assert await models.fetch_latest("sea") == (12, b"twelve")
    assert await models.latest_versions() == {"sea": 12}
    assert await models.latest_versions(["sea", "ctr"]) == {"sea": 12}


async def test_the_newest_k_are_kept_superseded_ones_expire_the_latest_never(models: RedisModelStore) -> None:
    for v in range(1, 8):
        await models.publish("sea", v, f"v{v}".encode())
    await models.publish("ctr", 1, b"ctr")
    present = [v for v in range(1, 8) if await models.fetch("sea", v) is not None]
    assert present == [5, 6, 7]
    ttl = models.r.ttl
    assert await ttl(f"{models.prefix}model:sea:7") == -1  # the latest: no expiry
    assert 0 < await ttl(f"{models.prefix}model:sea:6") <= 60
    assert await models.latest_versions() == {"ctr": 1, "sea": 7}
    assert models.uri("sea", 7) == f"learnloop+redis:{models.prefix}model:sea:7"
