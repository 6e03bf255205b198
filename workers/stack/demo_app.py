"""The demo's simulated app: the two-call loop, predict now and report the outcome later by prediction_id.

It predicts through the SDK (``OnlinePredictor``, logging each prediction as the gateway
does), and for a share of its predictions sends, after a delay, feedback that carries only
the ``prediction_id`` and the true label: the feedback worker joins it to the features that
were served. Until a learner has a published version the app cannot predict, so it reports
the example with its features (a cold start).

What it shows per learner: the version it is served, its served accuracy (predictions that
were right when they were served, which lags the prequential accuracy by the learning
latency), and the learning latency itself: from a labelled feedback event being produced to
the first prediction served from a version that includes it. A version ``v`` has learned
``v`` events (``streams.publisher``); the app counts the feedback it produced per learner,
so the ``k``-th is in every version from ``k`` on (joined feedback is learned in join order,
so this is exact to within the few events a join reorders).
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field
from typing import NamedTuple

from schemas import FeatureValue, FeedbackEvent
from streams.predictor import ModelNotReady, OnlinePredictor

LATENCY_EVERY = 20  # feedback events between two learning-latency probes, per learner
LATENCY_KEPT = 200  # probes kept per learner for the shown percentiles


class AppTurn(NamedTuple):
    """One moment the app needs a prediction for ``x``; ``y`` is the outcome it learns later."""

    learner: str
    x: dict[str, FeatureValue]
    y: bool


@dataclass
class ServedStats:
    version: str | None = None
    served: int = 0
    right: int = 0
    reported: int = 0  # predictions whose outcome the app sent back
    produced: int = 0  # labelled feedback events produced for this learner, in order
    probes: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)  # (k, produced at)
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=LATENCY_KEPT))

    @property
    def accuracy(self) -> float | None:
        return self.right / self.served if self.served else None

    def latency(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class SimulatedApp:
    """Predicts through ``predictor`` and schedules the delayed feedback; ``due`` hands it over when it is time.

    >>> app = SimulatedApp(None, feedback_share=1.0, delay_s=0.5)  # type: ignore[arg-type]
    >>> app.produced("sea", now=10.0) is None  # a feedback event counted; the first one is a probe
    True
    >>> app.stats["sea"].produced, len(app.stats["sea"].probes)
    (1, 1)
    """

    def __init__(
        self, predictor: OnlinePredictor, *, feedback_share: float = 0.8, delay_s: float = 1.0, seed: int = 7
    ) -> None:
        self.predictor = predictor
        self.feedback_share = feedback_share
        self.delay_s = delay_s
        self.stats: dict[str, ServedStats] = collections.defaultdict(ServedStats)
        self._pending: collections.deque[tuple[float, FeedbackEvent]] = collections.deque()
        self._rng = random.Random(seed)

    def serve(self, turn: AppTurn, now: float) -> FeedbackEvent | None:
        """Predict for ``turn``; the feedback to send at once when nothing is served yet (a cold start)."""
        try:
            prediction = self.predictor.predict(turn.learner, turn.x)
        except ModelNotReady:
            return FeedbackEvent(learner=turn.learner, features=turn.x, label=turn.y, source="demo-app")
        stats = self.stats[turn.learner]
        stats.version = prediction.model_version
        stats.served += 1
        stats.right += prediction.label == turn.y
        self._observe(turn.learner, int(prediction.model_version), now)
        if self._rng.random() < self.feedback_share:
            later = FeedbackEvent(learner=turn.learner, prediction_id=prediction.prediction_id, label=turn.y,
                                  source="demo-app")  # fmt: skip
            self._pending.append((now + self.delay_s, later))
        return None

    def due(self, now: float) -> list[FeedbackEvent]:
        """The delayed feedback whose time has come, oldest first."""
        out = []
        while self._pending and self._pending[0][0] <= now:
            event = self._pending.popleft()[1]
            self.stats[event.learner].reported += 1
            out.append(event)
        return out

    def produced(self, learner: str, now: float) -> None:
        """Count one labelled feedback event produced for ``learner`` (every ``LATENCY_EVERY``-th is timed)."""
        stats = self.stats[learner]
        stats.produced += 1
        if stats.produced % LATENCY_EVERY == 1:
            stats.probes.append((stats.produced, now))

    def _observe(self, learner: str, version: int, now: float) -> None:
        stats = self.stats[learner]
        while stats.probes and stats.probes[0][0] <= version:
            _, at = stats.probes.popleft()
            stats.latencies.append(now - at)
