"""Published learner models in Redis: signed snapshots by learner and version.

Why Redis: it is already there (the feedback worker keeps its state in it), a serving process
fetches one blob by key in one round trip, and a value can be far larger than a Kafka record
may be (an adaptive random forest's pickle exceeds the broker's default 1 MiB message limit).
The model-update topic carries the announcement only; the blob stays here.

Key layout (``P`` is the configured prefix, ``learnloop:`` by default)::

    P model:{learner}:{version}     signed snapshot (learners.snapshot) of one OnlineLearner
    P model-latest:{learner}        the latest version, as a decimal string
    P model-versions:{learner}      ZSET version -> version, trimmed to the newest ``keep``
    P models                        SET of learners with a published version

The latest version never expires, so a learner that gets no feedback for a week still serves;
a superseded one expires ``superseded_ttl_s`` after it was superseded (a predictor that heard
of it late can still fetch it meanwhile), and at most ``keep`` versions are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.errors import StoreUnavailable
from streams.config import ServingConfig
from workers.settings import RedisConfig

URI_SCHEME = "learnloop+redis"


@contextlib.asynccontextmanager
async def _reachable(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis unavailable during {what}: {exc}") from exc


def _as_bytes(v: bytes | str) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)


# KEYS: latest pointer, versions ZSET, learner set. ARGV: learner, version, blob, keep, ttl, blob key prefix.
# Versions only grow: a version at or below the latest is not stored (a replay after a rewind
# re-learns versions already published; the first model of a number is the one that stays).
_PUBLISH = """
local latest = tonumber(redis.call("GET", KEYS[1]) or "-1")
local version = tonumber(ARGV[2])
if version <= latest then return {0, latest} end
local prefix = ARGV[6]
redis.call("SET", prefix .. ARGV[2], ARGV[3])
if latest >= 0 then redis.call("EXPIRE", prefix .. string.format("%d", latest), tonumber(ARGV[5])) end
redis.call("SET", KEYS[1], ARGV[2])
redis.call("ZADD", KEYS[2], version, ARGV[2])
redis.call("SADD", KEYS[3], ARGV[1])
local old = redis.call("ZRANGE", KEYS[2], 0, -(tonumber(ARGV[4]) + 1))
for _, v in ipairs(old) do
  redis.call("DEL", prefix .. v)
  redis.call("ZREM", KEYS[2], v)
end
return {1, version}
"""

# KEYS: latest pointer. ARGV: blob key prefix. The pointer and its blob in one read.
_FETCH_LATEST = """
local v = redis.call("GET", KEYS[1])
if not v then return nil end
return {v, redis.call("GET", ARGV[1] .. v)}
"""


class RedisModelStore:
    """Implements ``streams.ports.ModelStore`` on Redis.

    >>> RedisModelStore(aioredis.Redis(), prefix="learnloop:").uri("sea", 1200)
    'learnloop+redis:learnloop:model:sea:1200'
    """

    def __init__(
        self, client: aioredis.Redis, *, prefix: str = "learnloop:", keep: int = 5, superseded_ttl_s: int = 600
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.keep = keep
        self.superseded_ttl_s = superseded_ttl_s
        self._publish = self.r.register_script(_PUBLISH)
        self._fetch_latest = self.r.register_script(_FETCH_LATEST)

    @classmethod
    def from_config(cls, redis: RedisConfig, serving: ServingConfig | None = None) -> RedisModelStore:
        serving = serving or ServingConfig()
        client = aioredis.Redis.from_url(redis.url, decode_responses=False)
        return cls(client, prefix=redis.key_prefix, keep=serving.keep_versions,
                   superseded_ttl_s=serving.superseded_ttl_s)  # fmt: skip

    async def close(self) -> None:
        await self.r.aclose()

    def _blob_prefix(self, learner: str) -> str:
        return f"{self.prefix}model:{learner}:"

    def _latest_key(self, learner: str) -> str:
        return f"{self.prefix}model-latest:{learner}"

    def uri(self, learner: str, version: int) -> str:
        return f"{URI_SCHEME}:{self._blob_prefix(learner)}{version}"

    async def publish(self, learner: str, version: int, blob: bytes) -> tuple[bool, int]:
        keys = [self._latest_key(learner), f"{self.prefix}model-versions:{learner}", f"{self.prefix}models"]
        args: list[str | int | bytes] = [
            learner, version, blob, self.keep, self.superseded_ttl_s, self._blob_prefix(learner)
        ]
        async with _reachable("model publication"):
            stored, latest = await self._publish(keys=keys, args=args)
        return bool(stored), int(latest)

    async def fetch(self, learner: str, version: int) -> bytes | None:
        async with _reachable("model fetch"):
            blob = await self.r.get(f"{self._blob_prefix(learner)}{version}")
        return _as_bytes(blob) if blob is not None else None

    async def fetch_latest(self, learner: str) -> tuple[int, bytes] | None:
        async with _reachable("model fetch"):
            found = await self._fetch_latest(keys=[self._latest_key(learner)], args=[self._blob_prefix(learner)])
        if not found or found[1] is None:  # nothing published, or the blob was deleted by hand
            return None
        return int(found[0]), _as_bytes(found[1])

    async def latest_versions(self, learners: Sequence[str] | None = None) -> dict[str, int]:
        async with _reachable("model versions"):
            if learners is None:
                learners = sorted(_as_bytes(n).decode() for n in await self.r.smembers(f"{self.prefix}models"))
            if not learners:
                return {}
            found = await self.r.mget([self._latest_key(n) for n in learners])
        return {name: int(v) for name, v in zip(learners, found, strict=True) if v is not None}
