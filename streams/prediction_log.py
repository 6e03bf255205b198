"""Logging served predictions: ``PredictionEvent`` on ``learnloop.predictions``, off the predict call.

``predict`` hands each entry to a queue (an append, thread-safe) and returns; a task on the
predictor's loop builds and validates the events and sends them through the producer SDK,
which batches them (``linger_ms``). The feedback worker stores them for the join, so feedback
that carries only a ``prediction_id`` is learned from the exact features that were served.
A full queue, an invalid entry or a failed send drops that log entry (never the prediction),
counted in ``learnloop_prediction_logs_dropped_total`` by reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from learners.models import FeatureValue
from schemas import PredictionEvent
from streams.config import KafkaConfig
from streams.metrics import PredictorMetrics
from streams.producer import EventProducer
from streams.topics import Topics

if TYPE_CHECKING:
    from streams.predictor import Prediction

log = logging.getLogger(__name__)

LogEntry = tuple["Prediction", dict[str, FeatureValue] | None, str | None, str | None]
"""What was served, the features and text it was served for, and the subject."""


class PredictionLog:
    """Sends logged predictions in the background; uses ``producer`` if given, else starts its own."""

    def __init__(
        self,
        kafka: KafkaConfig,
        *,
        source: str,
        capacity: int,
        topics: Topics,
        metrics: PredictorMetrics,
        producer: EventProducer | None = None,
    ) -> None:
        self.kafka = kafka
        self.source = source
        self.capacity = capacity
        self.topics = topics
        self.metrics = metrics
        self._producer = producer
        self._own_producer = producer is None
        self._queue: collections.deque[LogEntry | PredictionEvent] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._sending = asyncio.Lock()  # flush() waits for a drain in progress: its entries are popped already
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        if self._producer is None:
            self._producer = EventProducer(self.kafka, topics=self.topics)
            await self._producer.start()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._drain(), name="learnloop-predictor-log")
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        """Send what is queued, then stop (and close the producer if it is this log's own)."""
        self._stopped = True  # a prediction served from now on is counted, not queued for a loop that ends
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        try:
            if self._producer is not None:
                await self._send_logged()
        finally:
            if self._own_producer and self._producer is not None:
                producer, self._producer = self._producer, None
                await producer.stop()

    async def flush(self) -> None:
        """Send every entry queued so far and wait for the broker to acknowledge them."""
        await self._send_logged()
        if self._producer is not None:
            await self._producer.flush()

    def enqueue(self, entry: LogEntry | PredictionEvent) -> None:
        """Queue an entry to log: an online prediction, or a ready event (a registered model's answer)."""
        if len(self._queue) >= self.capacity or self._stopped:
            self.metrics.prediction_logs_dropped.labels("stopped" if self._stopped else "buffer_full").inc()
            return
        self._queue.append(entry)
        if not self._wake_pending and self._loop is not None:
            # Once per drain, not per call; the drainer clears the flag before it empties the queue.
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._wake_pending = False
            await self._send_logged()

    async def _send_logged(self) -> None:
        async with self._sending:
            await self._send_queue()

    async def _send_queue(self) -> None:
        if self._producer is None:
            return
        counts: collections.Counter[str] = collections.Counter()
        invalid = 0
        while self._queue:
            entry = self._queue.popleft()
            if isinstance(entry, PredictionEvent):
                event = entry
            else:
                prediction, features, text, subject_id = entry
                try:
                    event = _prediction_event(prediction, features, text, subject_id, self.source)
                except ValidationError as exc:
                    invalid += 1
                    if invalid == 1:
                        log.warning("prediction %s not logged: %s", prediction.prediction_id, _first_error(exc))
                    continue
            try:
                await self._producer.send(event)
            except KafkaError as exc:
                self.metrics.prediction_logs_dropped.labels("send_failed").inc()
                log.error("prediction %s not logged: %r", event.prediction_id, exc)
                continue
            counts[event.learner] += 1
        if invalid:
            self.metrics.prediction_logs_dropped.labels("invalid").inc(invalid)
        for learner, n in counts.items():
            self.metrics.predictions_logged.labels(learner).inc(n)


def _prediction_event(
    prediction: Prediction,
    features: dict[str, FeatureValue] | None,
    text: str | None,
    subject_id: str | None,
    source: str,
) -> PredictionEvent:
    probability = None
    if prediction.probabilities is not None and prediction.label is not None:
        probability = float(prediction.probabilities.get(prediction.label, 0.0))
    return PredictionEvent(
        source=source,
        prediction_id=prediction.prediction_id,
        learner=prediction.learner,
        features=features,
        text=text,
        prediction=prediction.prediction,
        probability=probability,
        model_version=prediction.model_version,
        subject_id=subject_id,
    )


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("prediction logging stopped: predictions are still served, no longer logged",
                  exc_info=task.exception())  # fmt: skip
