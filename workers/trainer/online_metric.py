"""The online learners' prequential metric, for the first-champion gate (``gate(..., online_metric=...)``).

A first candidate must also beat the online learner that feeds its model, over the same recent
data. The learner's rolling metric (its last ``rolling_window`` labelled events, the data the
trainer's ``last_n`` window is drawn from) stands for that window; the cumulative one is used
when no rolling value is published. With several learners feeding one model, the best counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import redis

from workers.settings import RedisConfig

log = logging.getLogger(__name__)


class OnlineMetrics:
    """Reads the statuses the feedback worker publishes in Redis (as `learnloop learners` does)."""

    def __init__(self, config: RedisConfig) -> None:
        self.prefix = config.key_prefix
        self.client = redis.Redis.from_url(config.url, decode_responses=False, socket_timeout=5)

    def __call__(self, learners: Sequence[str], metric: str) -> float | None:
        try:
            values = [v for name in learners if (v := self._one(name, metric)) is not None]
        except (redis.RedisError, OSError) as exc:
            # The gate then holds the candidate to the majority class alone; say so.
            log.warning("online learners' %s unavailable (%r): the first-champion gate skips that baseline",
                        metric, exc)
            return None
        if not values:
            return None
        return min(values) if metric == "log_loss" else max(values)

    def _one(self, name: str, metric: str) -> float | None:
        blobs = self.client.hvals(f"{self.prefix}status:{name}") or []
        if not blobs and (old := self.client.get(f"{self.prefix}learner:{name}")) is not None:
            blobs = [old]
        statuses = [json.loads(b) for b in blobs]
        if not statuses:
            return None
        st = max(statuses, key=lambda s: s.get("n_learned", 0))  # a split learner: the copy that learned most
        metrics = st.get("metrics") or {}
        value = metrics.get(f"rolling_{metric}", metrics.get(metric))
        return float(value) if isinstance(value, int | float) else None
