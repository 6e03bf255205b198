"""Redis adapters for the streams ports: partition snapshots, dedup windows, the prediction join.

Key layout (``P`` is the configured prefix, ``learnloop:`` by default)::

    P state:{topic}:{partition}       snapshot bytes (learners + the offset they cover)
    P dedup:{topic}:{partition}       ZSET event_id -> sequence, trimmed to the window
    P status:{name}                   HASH {topic}:{partition} -> JSON status of the learner held there,
                                      written with that partition's snapshot
    P learners                        SET of learner names
    P progress:{group}:{topic}:{p}    HASH position, highwater, updated_at (for lag views); failure,
                                      failure_reason, failed_at while the worker stopped on the partition
    P pred:{prediction_id}            a PredictionEvent's JSON, expiring after the join TTL

The snapshot, the dedup ids and the statuses go in one MULTI/EXEC, so after a
crash the state, the offset and the "already seen" window always agree.

A learner is held by its owner partition (``streams.partitioning``), but a partition
count that changed leaves its older model on the former owner: each partition writes
its own field of ``status:{name}``, so no status ever overwrites another model's.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.envelope import rfc3339
from schemas.errors import StoreUnavailable
from workers.settings import RedisConfig


@contextlib.asynccontextmanager
async def _reachable(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis unavailable during {what}: {exc}") from exc


# KEYS[1] the dedup ZSET; ARGV: base score, window, ids separated by newlines.
# Scores increase with the offset, so trimming by rank drops the oldest ids.
_APPEND_IDS = """
local key, base, window = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local args, n = {}, 0
for id in string.gmatch(ARGV[3], "[^\\n]+") do
  args[#args + 1] = string.format("%d", base + n)
  args[#args + 1] = id
  n = n + 1
  if #args >= 2000 then
    redis.call("ZADD", key, unpack(args))
    args = {}
  end
end
if #args > 0 then redis.call("ZADD", key, unpack(args)) end
redis.call("ZREMRANGEBYRANK", key, 0, -(window + 1))
return n
"""


_FAILURE_FIELDS = ("failure", "failure_reason", "failed_at")


def _as_bytes(v: bytes | str) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)


class RedisStore:
    """Implements ``PartitionStateStore`` and ``JoinStore`` on one Redis connection pool."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "learnloop:", dedup_window: int = 200_000) -> None:
        self.r = client
        self.prefix = prefix
        self.dedup_window = dedup_window

    @classmethod
    def from_config(cls, cfg: RedisConfig, *, dedup_window: int = 200_000) -> RedisStore:
        client = aioredis.Redis.from_url(cfg.url, decode_responses=False)
        return cls(client, prefix=cfg.key_prefix, dedup_window=dedup_window)

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    def _k(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    # -- PartitionStateStore -----------------------------------------------------

    async def load(self, topic: str, partition: int) -> bytes | None:
        async with _reachable("snapshot load"):
            blob = await self.r.get(self._k("state", topic, partition))
        return _as_bytes(blob) if blob is not None else None

    async def seen(self, topic: str, partition: int, event_ids: Sequence[str]) -> list[bool]:
        if not event_ids:
            return []
        async with _reachable("dedup lookup"):
            scores = await self.r.zmscore(self._k("dedup", topic, partition), list(event_ids))
        return [s is not None for s in scores]

    async def recent_ids(self, topic: str, partition: int) -> list[str]:
        async with _reachable("dedup window load"):
            ids = await self.r.zrange(self._k("dedup", topic, partition), 0, -1)
        return [_as_bytes(i).decode() for i in ids]  # type: ignore[arg-type]

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
        dedup = self._k("dedup", topic, partition)
        async with _reachable("snapshot commit"), self.r.pipeline(transaction=True) as p:
            p.set(self._k("state", topic, partition), snapshot)
            if event_ids:
                # One argument instead of 2 per id: redis-py packs each argument in Python
                # (~2.5 us an id, 20k ids a snapshot); the script splits them server-side.
                p.eval(_APPEND_IDS, 1, dedup, offset * 1_000_000, self.dedup_window, "\n".join(event_ids))
            now = rfc3339(time.time())
            for name, st in statuses.items():
                row = json.dumps({**st, "snapshot_at": now}, default=str)
                p.hset(self._k("status", name), f"{topic}:{partition}", row)
            if statuses:
                p.sadd(self._k("learners"), *statuses.keys())
            await p.execute()

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
        mapping: dict[str, str | int | float] = {"position": position, "updated_at": time.time()}
        if counters is not None:
            mapping["counters"] = json.dumps(dict(counters))
        if highwater is not None:
            mapping["highwater"] = highwater
        key = self._k("progress", group, topic, partition)
        async with _reachable("progress"), self.r.pipeline(transaction=False) as p:
            p.hset(key, mapping=mapping)  # type: ignore[arg-type]
            p.hdel(key, *_FAILURE_FIELDS)  # processed again: whatever stopped it before is over
            await p.execute()

    async def publish_failure(
        self, group: str, topic: str, partition: int, *, position: int, reason: str, message: str
    ) -> None:
        now = time.time()
        mapping = {"position": position, "updated_at": now, "failure": message, "failure_reason": reason,
                   "failed_at": now}
        async with _reachable("progress"):
            await self.r.hset(self._k("progress", group, topic, partition), mapping=mapping)  # type: ignore[arg-type]

    # -- JoinStore -------------------------------------------------------------------

    async def put_predictions(self, rows: Sequence[tuple[str, bytes]], *, ttl_s: int) -> None:
        async with _reachable("prediction store"), self.r.pipeline(transaction=False) as p:
            for pid, blob in rows:
                p.set(self._k("pred", pid), blob, ex=ttl_s)
            await p.execute()

    async def get_predictions(self, prediction_ids: Sequence[str]) -> list[bytes | None]:
        if not prediction_ids:
            return []
        async with _reachable("prediction lookup"):
            vals = await self.r.mget([self._k("pred", pid) for pid in prediction_ids])
        return [_as_bytes(v) if v is not None else None for v in vals]

    # -- drift history (idempotent by event_id, newest 1,000 kept) -------------------

    async def record_drift(self, event_id: str, detected_at: float, payload: bytes) -> None:
        idx, data = self._k("drift-index"), self._k("drift-events")
        async with _reachable("drift history"), self.r.pipeline(transaction=True) as p:
            p.zadd(idx, {event_id: detected_at})
            p.hset(data, event_id, payload)
            await p.execute()
        stale = await self.r.zrange(idx, 0, -1001)
        if stale:
            await self.r.zrem(idx, *stale)
            await self.r.hdel(data, *stale)

    async def recent_drifts(self, limit: int = 20) -> list[dict[str, Any]]:
        ids = [_as_bytes(i) for i in await self.r.zrevrange(self._k("drift-index"), 0, limit - 1)]  # type: ignore[arg-type]
        if not ids:
            return []
        blobs = await self.r.hmget(self._k("drift-events"), ids)
        return [json.loads(b) for b in blobs if b is not None]

    # -- reading status ----------------------------------------------------------------

    async def learner_statuses(self) -> list[dict[str, Any]]:
        """One row per learner and partition that holds it, by name then partition.

        A learner held by more than one partition (its owner moved when the partition count
        changed) is two models: each row says ``split``, and which partition owns it now.
        """
        async with _reachable("learner statuses"):
            names = sorted(_as_bytes(n).decode() for n in await self.r.smembers(self._k("learners")))
            if not names:
                return []
            async with self.r.pipeline(transaction=False) as p:
                for n in names:
                    p.hvals(self._k("status", n))
                held: dict[str, list[bytes]] = dict(zip(names, await p.execute(), strict=True))
            # Written before statuses were kept per partition; replaced by that partition's next snapshot.
            older = [n for n, blobs in held.items() if not blobs]
            if older:
                for n, blob in zip(older, await self.r.mget([self._k("learner", n) for n in older]), strict=True):
                    held[n] = [_as_bytes(blob)] if blob is not None else []
        rows = []
        for blobs in held.values():
            statuses = [json.loads(b) for b in blobs]
            if len(statuses) > 1:
                statuses.sort(key=lambda st: (st["topic"], st["partition"]))
            for st in statuses:
                st["split"] = len(statuses) > 1
            rows.extend(statuses)
        return rows

    async def progress(self) -> list[dict[str, Any]]:
        out = []
        async for key in self.r.scan_iter(match=self._k("progress", "*")):
            group, topic, part = _as_bytes(key).decode()[len(self.prefix) + len("progress:"):].rsplit(":", 2)
            h = {_as_bytes(k).decode(): _as_bytes(v).decode() for k, v in (await self.r.hgetall(key)).items()}
            row: dict[str, Any] = {"group": group, "topic": topic, "partition": int(part)}
            row["position"] = int(h["position"])
            row["highwater"] = int(h["highwater"]) if "highwater" in h else None
            row["lag"] = max(0, row["highwater"] - row["position"]) if row["highwater"] is not None else None
            row["updated_at"] = float(h["updated_at"])
            row["counters"] = json.loads(h.get("counters", "{}"))
            row["failure"] = h.get("failure")
            row["failure_reason"] = h.get("failure_reason")
            out.append(row)
        return sorted(out, key=lambda r: (r["group"], r["topic"], r["partition"]))
