"""Each learner's metric over time, kept in Redis so a page reload (or a gateway restart) keeps its charts.

The feedback worker writes a learner's status with every snapshot, overwriting
the last one. The gateway samples those statuses every ``api.history_every_s``
and appends one point per learner that learned since its last point, to a list
per learner capped at ``api.history_points`` (oldest dropped). The append is
one Lua script: several gateways sampling the same status add it once, and a
learner whose count went back (its state was reset) starts a new line.

Key layout (``P`` is the Redis key prefix)::

    P history:{learner}    LIST of JSON points {"t": epoch s, "n": events learned, "metric", "value"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.errors import StoreUnavailable
from workers.lag.freshness import parse_time

log = logging.getLogger(__name__)

# The metric a learner is judged by, first present wins: the status page charts the same one.
MAIN_METRICS = ("rolling_accuracy", "accuracy", "rolling_mae", "mae")

# KEYS[1] the learner's list; ARGV: the point's JSON, its n, the cap.
_APPEND = """
local last = redis.call("LINDEX", KEYS[1], -1)
local n = tonumber(ARGV[2])
if last then
  local prev = tonumber(cjson.decode(last)["n"])
  if prev == n then return 0 end
  if n < prev then redis.call("DEL", KEYS[1]) end
end
redis.call("RPUSH", KEYS[1], ARGV[1])
redis.call("LTRIM", KEYS[1], -tonumber(ARGV[3]), -1)
return 1
"""


@dataclass(frozen=True)
class Point:
    t: float  # when the learner had learned ``n`` events (seconds since the epoch)
    n: int
    metric: str
    value: float

    def as_json(self) -> dict[str, Any]:
        """RFC 3339 time, like every time the gateway answers with."""
        return {"at": datetime.fromtimestamp(self.t, tz=UTC).isoformat(), "n": self.n, "metric": self.metric,
                "value": self.value}


def main_metric(metrics: object) -> tuple[str, float] | None:
    """The metric a learner's chart shows, and its value.

    >>> main_metric({"accuracy": 0.8, "rolling_accuracy": 0.9})
    ('rolling_accuracy', 0.9)
    >>> main_metric({"rolling_mae": 2}), main_metric({}), main_metric(None)
    (('rolling_mae', 2.0), None, None)
    """
    if not isinstance(metrics, Mapping):
        return None
    for name in MAIN_METRICS:
        value = metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return name, float(value)
    return None


def point_of(status: Mapping[str, Any], now: float) -> Point | None:
    """A status as a history point; None without a count or a metric.

    Its time is when the learner last learned (``learned_at``), else when the
    status was written (``snapshot_at``), else ``now``; epoch seconds or RFC 3339.

    >>> point_of({"n_learned": 5, "metrics": {"accuracy": 1}, "learned_at": 10.5}, now=99.0)
    Point(t=10.5, n=5, metric='accuracy', value=1.0)
    >>> point_of({"n_learned": 5, "metrics": {}}, now=99.0) is None
    True
    """
    n, metric = status.get("n_learned"), main_metric(status.get("metrics"))
    if not isinstance(n, int) or isinstance(n, bool) or metric is None:
        return None
    at = parse_time(status.get("learned_at")) or parse_time(status.get("snapshot_at"))
    return Point(at.timestamp() if at is not None else now, n, *metric)


class LearnerHistory:
    """The capped point lists in Redis, on the gateway's Redis client."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "learnloop:", limit: int = 720) -> None:
        self.r = client
        self.prefix = prefix
        self.limit = limit

    def _key(self, learner: str) -> str:
        return f"{self.prefix}history:{learner}"

    async def append(self, points: Mapping[str, Point]) -> int:
        """Add each learner's point unless its last point has the same count; returns how many were added."""
        if not points:
            return 0
        async with self.r.pipeline(transaction=False) as p:
            for learner, pt in points.items():
                body = json.dumps({"t": round(pt.t, 3), "n": pt.n, "metric": pt.metric, "value": pt.value})
                p.eval(_APPEND, 1, self._key(learner), body, pt.n, self.limit)
            added = await p.execute()
        return sum(int(a) for a in added)

    async def points(self, learner: str) -> list[Point]:
        """Oldest first."""
        out = []
        for raw in await self.r.lrange(self._key(learner), 0, -1):
            doc = json.loads(raw)
            out.append(Point(float(doc["t"]), int(doc["n"]), str(doc["metric"]), float(doc["value"])))
        return out


StatusSource = Callable[[], Awaitable[list[dict[str, Any]]]]


class HistorySampler:
    """Appends the learners' statuses to their histories every ``every_s`` until stopped.

    Redis going away does not stop it: it says so once, keeps trying, and says when it is back.
    """

    def __init__(self, statuses: StatusSource, history: LearnerHistory, every_s: float) -> None:
        self.statuses = statuses
        self.history = history
        self.every_s = every_s
        self.failing = False

    async def sample(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        points = {}
        for st in await self.statuses():
            if st.get("split") and st.get("partition") != st.get("owner_partition"):
                continue  # a model left on its former partition: the history follows the one that learns now
            name, pt = st.get("name"), point_of(st, now)
            if isinstance(name, str) and pt is not None:
                points[name] = pt
        return await self.history.append(points)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sample()
            except Exception as error:  # the gateway keeps serving; the log says why the charts stopped
                if not self.failing:
                    expected = isinstance(error, StoreUnavailable | RedisError | OSError)
                    log.warning("learner history paused: %s", error, exc_info=not expected)
                self.failing = True
            else:
                if self.failing:
                    log.info("learner history resumed")
                self.failing = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.every_s)
