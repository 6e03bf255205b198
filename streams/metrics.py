"""Prometheus metrics of the stream loops and the workers, recorded per batch, never per event.

One metrics object per process, of that worker's kind, bound to a ``CollectorRegistry`` (prometheus_client's
default one in the workers, a fresh one in tests). Counters grow by a batch's count and
histograms take one observation per batch, so the feedback path pays a few microseconds
per batch of thousands of events. Learner gauges are set when a snapshot is written,
from the statuses computed for Redis at that moment anyway. Snapshot age is computed when
Prometheus scrapes, so it keeps growing while a stuck loop writes nothing.

The learning code (``learners/``) never sees this module: the loops read what the
learners already expose (``n_seen``, ``status()``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from schemas import DriftEvent, DriftEventV2
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from streams.feedback import BatchResult, LearnerSlot

__all__ = [
    "ConversationMetrics", "FeedbackMetrics", "LearnedTally", "LoopMetrics", "PredictorMetrics", "TrainerMetrics",
    "conversation_metrics", "feedback_metrics", "predictor_metrics", "serve_metrics", "trainer_metrics",
]

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PER_EVENT_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 1e-2)
_GRAPH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STAGE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_JOB_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)


def _family(registry: CollectorRegistry, kind: type[Any], name: str, doc: str, labels: Sequence[str] = (),
            **kw: Any) -> Any:
    """The metric ``name`` of ``registry``, registered on first use.

    Families that several kinds of worker record (records in, dead letters, duplicates, batch
    time) are shared, so a test process may hold a feedback and a trainer ``Metrics`` on one
    registry without registering a name twice.
    """
    families = _FAMILIES.setdefault(registry, {})
    if name not in families:
        families[name] = kind(name, doc, labels, registry=registry, **kw)
    return families[name]


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()


class LoopMetrics:
    """What every consuming loop records: records in and dead letters, by topic.

    Each worker process registers only its own kind's families (:class:`FeedbackMetrics`,
    :class:`ConversationMetrics`, :class:`TrainerMetrics`): a scrape shows what the process does,
    not a zero series for every metric of the others.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = r = registry
        self.events_in: Counter = _family(r, Counter, "learnloop_events_in", "Records consumed", ["topic"])
        self.deadlettered: Counter = _family(
            r, Counter, "learnloop_events_deadlettered", "Records sent to the dead-letter topic", ["topic", "reason"]
        )


class _BatchLoopMetrics(LoopMetrics):
    """The batch loops (feedback, conversations): also duplicates and batch time."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(registry)
        r = registry
        self.duplicates: Counter = _family(
            r, Counter, "learnloop_duplicates_dropped", "Events dropped as already processed (event_id)", ["topic"]
        )
        self.batch_seconds: Histogram = _family(
            r, Histogram, "learnloop_batch_seconds",
            "Time to process one non-empty batch, outputs acknowledged and committed", ["loop"],
            buckets=_BATCH_BUCKETS,
        )


class FeedbackMetrics(_BatchLoopMetrics):
    """The feedback worker's metrics: learning, learners' prequential metrics, drift, snapshots.

    >>> from prometheus_client import CollectorRegistry
    >>> from streams.feedback import BatchResult
    >>> m = FeedbackMetrics(CollectorRegistry())
    >>> r = BatchResult(learned=3, duplicates=1)
    >>> r.deadlettered["invalid"] += 2
    >>> m.record_batch("learnloop.feedback", 6, r)
    >>> m.registry.get_sample_value("learnloop_events_deadlettered_total",
    ...                             {"topic": "learnloop.feedback", "reason": "invalid"})
    2.0
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(registry)
        r = registry
        self.events_learned = Counter(
            "learnloop_events_learned", "Events learned by this process (a replay after a rewind learns again)",
            ["learner"], registry=r,
        )
        self.forwarded = Counter(
            "learnloop_events_forwarded",
            "Feedback records sent on to their learner's owner partition (they arrived on another one)",
            ["topic"], registry=r,
        )
        self.learn_seconds = Histogram(
            "learnloop_learn_seconds",
            "Processing time per feedback event (decode, dedup, join, predict, score, learn): "
            "a batch's time divided by its records, observed once per batch",
            buckets=_PER_EVENT_BUCKETS, registry=r,
        )
        self.learner_metric = Gauge(
            "learnloop_learner_metric", "A learner's prequential metric at its latest snapshot",
            ["learner", "partition", "metric"], registry=r,
        )
        self.learner_events = Gauge(
            "learnloop_learner_events", "Events a learner has learned in all (restored state included), "
            "at its latest snapshot", ["learner", "partition"], registry=r,
        )
        self.drift_alarms = Counter(
            "learnloop_drift_alarms", "Drift alarms raised (a replay after a rewind raises them again)",
            ["learner"], registry=r,
        )
        self.snapshots = Counter("learnloop_snapshots", "Learner snapshots written with their offsets", registry=r)
        self._snapshot_at: dict[tuple[str, int], float] = {}
        self._snapshot_lock = threading.Lock()  # the scrape runs in the HTTP server's thread
        self._learner_series: dict[int, set[tuple[str, str | None]]] = {}
        r.register(_SnapshotAge(self._snapshot_times))
        # -- live model versions: the feedback worker publishes each learner
        self.model_publications = Counter(
            "learnloop_model_publications", "Learner publications by outcome: published, superseded (a newer "
            "version was already stored), failed (the next publication carries the newer model)",
            ["learner", "outcome"], registry=r,
        )
        self.publish_capture_seconds = Histogram(
            "learnloop_publish_capture_seconds", "Time the feedback loop spends pickling and signing one learner "
            "for publication (the rest of a publication runs off the loop)", buckets=_BATCH_BUCKETS, registry=r,
        )

    # -- per batch -----------------------------------------------------------------

    def record_batch(self, topic: str, records: int, result: BatchResult) -> None:
        """Count one batch of ``topic``: records in, dead letters by reason, duplicates, forwards, drift alarms."""
        if records:
            self.events_in.labels(topic).inc(records)
        for reason, n in result.deadlettered.items():
            self.deadlettered.labels(topic, reason).inc(n)
        if result.duplicates:
            self.duplicates.labels(topic).inc(result.duplicates)
        if result.forwards:
            self.forwarded.labels(topic).inc(len(result.forwards))
        if result.drifts:
            for event in result.outputs:
                if isinstance(event, (DriftEvent, DriftEventV2)):
                    self.drift_alarms.labels(event.learner).inc()

    # -- snapshots -------------------------------------------------------------------

    def snapshot_written(self, topic: str, partition: int, statuses: Mapping[str, Mapping[str, Any]]) -> None:
        """A partition's snapshot is durable: count it, restart its age, publish its learners' metrics."""
        self.snapshots.inc()
        with self._snapshot_lock:
            self._snapshot_at[(topic, partition)] = time.time()
        series = self._learner_series.setdefault(partition, set())
        p = str(partition)
        for name, status in statuses.items():
            self.learner_events.labels(name, p).set(status["n_learned"])
            series.add((name, None))
            for metric, value in status["metrics"].items():
                if isinstance(value, int | float):
                    self.learner_metric.labels(name, p, metric).set(value)
                    series.add((name, metric))
            # The label-free estimate next to the realized metrics: "estimated_accuracy", "estimation_error"...
            estimate = (status.get("monitors") or {}).get("estimate") or {}
            for metric in ("estimated_accuracy", "estimated_f1", "estimation_error"):
                value = estimate.get(metric)
                if isinstance(value, int | float):
                    self.learner_metric.labels(name, p, metric).set(value)
                    series.add((name, metric))
            # Requests the retrain policy held back, by why: metric "retrain_gated_<reason>".
            for reason, count in ((status.get("retrain_gate") or {}).get("gated") or {}).items():
                metric = "retrain_gated_" + reason.replace(":", "_")
                self.learner_metric.labels(name, p, metric).set(count)
                series.add((name, metric))

    def snapshot_restored(self, topic: str, partition: int, created_at: str) -> None:
        """A partition resumed from a snapshot written at ``created_at`` (RFC 3339): its age counts from then."""
        at = datetime.fromisoformat(created_at).timestamp()
        with self._snapshot_lock:
            self._snapshot_at[(topic, partition)] = at

    def forget_partition(self, topic: str, partition: int) -> None:
        """The partition went to another worker: stop exporting its age and its learners."""
        with self._snapshot_lock:
            self._snapshot_at.pop((topic, partition), None)
        p = str(partition)
        for name, metric in self._learner_series.pop(partition, set()):
            if metric is None:
                self.learner_events.remove(name, p)
            else:
                self.learner_metric.remove(name, p, metric)

    def _snapshot_times(self) -> list[tuple[tuple[str, int], float]]:
        with self._snapshot_lock:
            return list(self._snapshot_at.items())



class ConversationMetrics(_BatchLoopMetrics):
    """The conversation worker's metrics: graph writes and what they wrote."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(registry)
        r = registry
        self.graph_write_seconds = Histogram(
            "learnloop_graph_write_seconds", "Time of one batch's graph write, retries included",
            buckets=_GRAPH_BUCKETS, registry=r,
        )
        self.graph_write_failures = Counter(
            "learnloop_graph_write_failures", "Batch graph writes that failed after the writer's retries", registry=r
        )
        self.graph_entities = Counter("learnloop_graph_entities", "Entities written (per turn)", registry=r)
        self.graph_relations = Counter("learnloop_graph_relations", "Relations written (per turn)", registry=r)
        self.conversation_turns = Counter(
            "learnloop_conversation_turns", "Conversation turns written to the graph (once each)", registry=r
        )


class TrainerMetrics(LoopMetrics):
    """The trainer's metrics: job runs by outcome (``TrainingOutcome`` values), durations, announced versions."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(registry)
        r = registry
        self.training_jobs = Counter(
            "learnloop_training_jobs", "Training job runs, by outcome: succeeded, failed, dataset_invalid, "
            "rejected, cancelled or lost", ["model", "outcome"], registry=r,
        )
        self.training_job_seconds = Histogram(
            "learnloop_training_job_seconds", "Duration of a training job run, whatever its outcome", ["model"],
            buckets=_JOB_BUCKETS, registry=r,
        )
        self.training_stage_seconds = Histogram(
            "learnloop_training_stage_seconds", "Seconds a succeeded training job spent per stage: startup, "
            "dataset, training, evaluation, registration, announce", ["model", "stage"],
            buckets=_STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_version = Gauge(
            "learnloop_model_version", "The version last announced for a model under an alias", ["model", "alias"],
            registry=r,
        )



class PredictorMetrics:
    """An ``OnlinePredictor``'s metrics (in the app or gateway that serves): versions loaded, predictions logged."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = r = registry
        self.served_version = Gauge(
            "learnloop_served_version", "The version (events learned) a predictor serves per learner", ["learner"],
            registry=r,
        )
        self.model_loads = Counter(
            "learnloop_model_loads", "Published versions a predictor loaded or refused, by outcome "
            "(loaded, refused_signature, refused_invalid, missing, failed)", ["learner", "outcome"], registry=r,
        )
        self.predictions_logged = Counter(
            "learnloop_predictions_logged", "Predictions a predictor sent to the predictions topic", ["learner"],
            registry=r,
        )
        self.prediction_logs_dropped = Counter(
            "learnloop_prediction_logs_dropped", "Predictions served but not logged, by reason "
            "(buffer_full, invalid, send_failed, stopped)", ["reason"], registry=r,
        )


class _SnapshotAge:
    """``learnloop_snapshot_age_seconds``, computed at scrape time from when each snapshot was written."""

    NAME = "learnloop_snapshot_age_seconds"
    HELP = "Seconds since the partition's latest snapshot was written (an idle partition is not re-snapshotted)"

    def __init__(self, times: Callable[[], list[tuple[tuple[str, int], float]]]) -> None:
        self._times = times

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["topic", "partition"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["topic", "partition"])
        now = time.time()
        for (topic, partition), at in self._times():
            family.add_metric([topic, str(partition)], max(0.0, now - at))
        yield family


class LearnedTally:
    """Events learned per learner, read from each partition's learners' ``n_seen``.

    A ``BatchResult`` counts only the batch's total; the learners know their own counts. A
    partition restored (or rewound) from a snapshot starts from the snapshot's counts, so the
    events replayed after it count again, as they do in ``BatchResult.learned``.
    """

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._seen: dict[tuple[str, int, str], int] = {}

    def restored(self, topic: str, partition: int, slots: Mapping[str, LearnerSlot]) -> None:
        self.forget(topic, partition)
        for name, slot in slots.items():
            self._seen[(topic, partition, name)] = slot.learner.n_seen

    def update(self, topic: str, partition: int, slots: Mapping[str, LearnerSlot]) -> None:
        for name, slot in slots.items():
            key = (topic, partition, name)
            n = slot.learner.n_seen
            learned = n - self._seen.get(key, 0)
            if learned > 0:
                self._counter.labels(name).inc(learned)
            if learned:
                self._seen[key] = n

    def forget(self, topic: str, partition: int) -> None:
        for key in [k for k in self._seen if k[0] == topic and k[1] == partition]:
            del self._seen[key]


@functools.cache
def feedback_metrics() -> FeedbackMetrics:
    """The feedback worker's metrics, on prometheus_client's default registry (the one :func:`serve_metrics` serves)."""
    return FeedbackMetrics(REGISTRY)


@functools.cache
def conversation_metrics() -> ConversationMetrics:
    """The conversation worker's metrics, on the default registry."""
    return ConversationMetrics(REGISTRY)


@functools.cache
def trainer_metrics() -> TrainerMetrics:
    """The trainer's metrics, on the default registry."""
    return TrainerMetrics(REGISTRY)


@functools.cache
def predictor_metrics() -> PredictorMetrics:
    """An online predictor's metrics, on the default registry (one per process, whatever it serves)."""
    return PredictorMetrics(REGISTRY)


def serve_metrics(host: str, port: int | None, registry: CollectorRegistry = REGISTRY) -> bool:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; ``False`` when off (0/None).

    A port that cannot be bound stops the worker at start-up (:class:`ConfigError`): a worker that
    runs unwatched after one log line is worse than one that does not start. ``learnloop dev``
    gives each of its workers a free port, so stacks side by side never meet this.
    """
    if not port:
        log.info("metrics endpoint off (no port configured)")
        return False
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): another process has that port; "
            "set LEARNLOOP_METRICS__PORT to a free port, or to 0 to serve no metrics"
        ) from None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True
