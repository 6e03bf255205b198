"""The Redis adapter's snapshot commit and dedup window, against a real Redis server."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import redis.asyncio as aioredis

from workers.feedback.redis_store import RedisStore
from workers.settings import Settings


async def test_commit_appends_ids_in_order_and_trims_to_the_window(settings: Settings) -> None:
    store = RedisStore(aioredis.Redis.from_url(settings.redis.url), prefix=settings.redis.key_prefix,
                       dedup_window=5_000)
    try:
        first = [str(uuid.uuid4()) for _ in range(3_000)]
        second = [str(uuid.uuid4()) for _ in range(3_000)]
        status = {"sea": {"n_learned": 3_000}}
        await store.commit("fb", 0, snapshot=b"one", offset=2_999, event_ids=first, statuses=status)
        assert await store.recent_ids("fb", 0) == first
        await store.commit("fb", 0, snapshot=b"two", offset=5_999, event_ids=second, statuses=status)

        window = await store.recent_ids("fb", 0)
        assert window == first[1_000:] + second  # the oldest 1,000 went, the order is the commit order
        assert await store.seen("fb", 0, [first[0], first[1_000], second[-1], "never"]) == [False, True, True, False]
        assert await store.load("fb", 0) == b"two"
        assert await store.recent_ids("fb", 1) == []  # windows are per partition
        [status_read] = await store.learner_statuses()
        assert status_read["n_learned"] == 3_000
        assert datetime.fromisoformat(status_read["snapshot_at"]).utcoffset() == timedelta(0)
    finally:
        await store.close()


async def test_a_commit_without_ids_keeps_the_window(settings: Settings) -> None:
    store = RedisStore(aioredis.Redis.from_url(settings.redis.url), prefix=settings.redis.key_prefix,
                       dedup_window=10)
    try:
        ids = [str(uuid.uuid4()) for _ in range(4)]
        await store.commit("fb", 2, snapshot=b"a", offset=3, event_ids=ids, statuses={})
        await store.commit("fb", 2, snapshot=b"b", offset=3, event_ids=[], statuses={})
        assert await store.recent_ids("fb", 2) == ids
        assert await store.load("fb", 2) == b"b"
        assert await store.learner_statuses() == []
    finally:
        await store.close()


async def test_a_learner_held_by_two_partitions_shows_both_models(settings: Settings) -> None:
    store = RedisStore(aioredis.Redis.from_url(settings.redis.url), prefix=settings.redis.key_prefix)

    def status(partition: int, n: int) -> dict[str, object]:
        return {"name": "sea", "topic": "fb", "partition": partition, "owner_partition": 1, "n_learned": n}

    try:
        await store.commit("fb", 1, snapshot=b"a", offset=9, event_ids=[], statuses={"sea": status(1, 1_000)})
        [alone] = await store.learner_statuses()
        assert (alone["partition"], alone["n_learned"], alone["split"]) == (1, 1_000, False)
        # The partition count changed, the old model stays on partition 2: neither hides the other.
        await store.commit("fb", 2, snapshot=b"b", offset=3, event_ids=[], statuses={"sea": status(2, 50)})
        await store.commit("fb", 1, snapshot=b"c", offset=12, event_ids=[], statuses={"sea": status(1, 1_003)})
        rows = await store.learner_statuses()
        assert [(r["name"], r["partition"], r["n_learned"], r["split"]) for r in rows] == [
            ("sea", 1, 1_003, True), ("sea", 2, 50, True),
        ]
    finally:
        await store.close()


async def test_a_status_written_before_per_partition_statuses_is_still_shown(settings: Settings) -> None:
    store = RedisStore(aioredis.Redis.from_url(settings.redis.url), prefix=settings.redis.key_prefix)
    try:
        p = settings.redis.key_prefix
        await store.r.set(f"{p}learner:old", b'{"name": "old", "topic": "fb", "partition": 0, "n_learned": 7}')
        await store.r.sadd(f"{p}learners", "old")
        [row] = await store.learner_statuses()
        assert (row["name"], row["n_learned"], row["split"]) == ("old", 7, False)
    finally:
        await store.close()


async def test_the_trainer_reads_the_online_learners_metric_the_feedback_worker_publishes(settings: Settings) -> None:
    from workers.trainer.online_metric import OnlineMetrics

    store = RedisStore(aioredis.Redis.from_url(settings.redis.url), prefix=settings.redis.key_prefix)

    def status(partition: int, n: int, f1: float) -> dict[str, object]:
        return {"name": "sea", "topic": "fb", "partition": partition, "n_learned": n,
                "metrics": {"f1": 0.5, "rolling_f1": f1}}

    online = OnlineMetrics(settings.redis)
    try:
        assert online(["sea"], "f1") is None  # no learner published: the gate skips that baseline
        await store.commit("fb", 1, snapshot=b"a", offset=9, event_ids=[], statuses={"sea": status(1, 900, 0.81)})
        await store.commit("fb", 2, snapshot=b"b", offset=3, event_ids=[], statuses={"sea": status(2, 40, 0.99)})
        await store.commit("fb", 0, snapshot=b"c", offset=3, event_ids=[],
                           statuses={"other": {"name": "other", "n_learned": 5, "metrics": {"f1": 0.7}}})
        # The rolling value of the copy that learned most; the best of the learners feeding the model.
        assert online(["sea"], "f1") == 0.81
        assert online(["sea", "other"], "f1") == 0.81
        assert online(["other"], "f1") == 0.7
    finally:
        online.client.close()
        await store.close()
