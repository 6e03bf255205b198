"""Predictor SDK: serve the online learners in-process, following their published versions.

``OnlinePredictor`` serves the latest published version of each learner it follows
(``streams.live_models``: loaded from the model store at start, then followed on
``learnloop.model-updates``, every blob verified before it is unpickled). ``predict`` runs
locally, with no network hop: River's own call on the served model, an id, and (by default)
an entry for ``streams.prediction_log``, which sends it as a ``PredictionEvent`` in the
background. Feedback that later carries only that ``prediction_id`` and a label is joined by
the feedback worker to the exact features that were served.

``SyncOnlinePredictor`` wraps it for threaded apps, on its own event loop in a daemon thread.
The snapshot key it verifies with lets whoever holds it sign models that this process will
unpickle (run): treat ``LEARNLOOP_SNAPSHOT__KEY`` as a secret.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from learners.models import FeatureValue, with_text
from streams.config import KafkaConfig, ServingConfig
from streams.live_models import LearnerNotFollowed, LiveModels, ModelNotReady, Served
from streams.loopthread import BlockingClient
from streams.metrics import PredictorMetrics, predictor_metrics
from streams.ports import ModelStore
from streams.prediction_log import LogEntry, PredictionLog
from streams.producer import EventProducer
from streams.topics import Topics

__all__ = ["LearnerNotFollowed", "ModelNotReady", "OnlinePredictor", "Prediction", "Served", "SyncOnlinePredictor"]


class Prediction(NamedTuple):
    """One served prediction. A tuple: built in a fraction of a microsecond on the hot path.

    Classification sets ``label`` and ``probabilities`` (class -> probability); regression sets
    ``value``. ``prediction_id`` is what feedback refers to.
    """

    learner: str
    prediction_id: str
    model_version: str
    label: Any = None
    probabilities: dict[Any, float] | None = None
    value: float | None = None

    @property
    def prediction(self) -> Any:
        """The label of a classification, the value of a regression."""
        return self.value if self.probabilities is None else self.label


_new_tuple = tuple.__new__  # a NamedTuple built without its generated __new__ (a third of the cost)


class OnlinePredictor:
    """Serves chosen learners (``learners``; ``None`` follows every published learner).

    With ``log`` (the default) every prediction is logged; ``producer`` shares an app's
    started ``EventProducer``, otherwise the predictor starts its own. ``own_store`` closes
    ``store`` when the predictor stops.

    >>> p = OnlinePredictor(KafkaConfig(), ["sea"], store=None, snapshot_key=b"k" * 16, log=False)
    >>> p.predict("sea", features={"x": 1.0})
    Traceback (most recent call last):
    ...
    streams.subscriber.ModelNotReady: no version of learner 'sea' is published yet (or none was loaded)
    >>> p.get("ctr")
    Traceback (most recent call last):
    ...
    streams.live_models.LearnerNotFollowed: learner 'ctr' is not followed by this predictor (following: sea)
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        learners: Iterable[str] | None,
        *,
        store: ModelStore,
        snapshot_key: bytes,
        log: bool = True,
        producer: EventProducer | None = None,
        source: str = "learnloop-predictor",
        config: ServingConfig | None = None,
        topics: Topics | None = None,
        metrics: PredictorMetrics | None = None,
        own_store: bool = False,
    ) -> None:
        followed = None if learners is None else frozenset(learners)
        if followed is not None and not followed:
            raise ValueError("follow at least one learner, or None for every published one")
        self.config = config or ServingConfig()
        self.topics = topics or Topics(kafka.topic_prefix)
        self.metrics = metrics or predictor_metrics()
        self.store = store
        self.own_store = own_store
        self.log = log
        self.live = LiveModels(
            kafka, followed, store=store, snapshot_key=snapshot_key, config=self.config, topics=self.topics,
            metrics=self.metrics,
        )  # fmt: skip
        self._live = self.live
        self._served = self.live.served  # the hot path reads this dict directly
        self._log = PredictionLog(
            kafka, source=source, capacity=self.config.log_buffer, topics=self.topics, metrics=self.metrics,
            producer=producer,
        ) if log else None  # fmt: skip
        self._enqueue: Callable[[LogEntry], None] = self._log.enqueue if self._log is not None else _not_logging
        # Unique without a uuid4 per call (str(uuid4()) takes about 2 us, as long as River's own predict
        # on a small model; this takes 0.2 us): 122 random bits per predictor, then a counter.
        self._id_prefix = uuid.uuid4().hex + "-"
        self._ids = itertools.count(1)

    @property
    def learners(self) -> frozenset[str] | None:
        return self.live.learners

    @property
    def refused(self) -> dict[str, str]:
        """The last version refused per learner (bad signature, or not the learner/version it claimed)."""
        return self.live.refused

    # -- serving (any thread) ---------------------------------------------------

    def get(self, learner: str) -> Served:
        """The version of ``learner`` being served; ``ModelNotReady`` / ``LearnerNotFollowed`` otherwise."""
        served = self._served.get(learner)
        if served is None:
            raise self._live.missing(learner)
        return served

    def predict(
        self,
        learner: str,
        features: Mapping[str, FeatureValue] | None = None,
        text: str | None = None,
        *,
        subject_id: str | None = None,
        log: bool | None = None,
    ) -> Prediction:
        """Predict with the served version of ``learner``; logs a ``PredictionEvent`` unless ``log`` is false.

        ``subject_id`` (the user, session, ...) is logged with the prediction; it does not change it.
        """
        served = self._served.get(learner)  # one read: a swap during the call does not change this version
        if served is None:
            raise self._live.missing(learner)
        return self._predict(served, features, text, subject_id, self.log if log is None else self._logged(log))

    def predict_many(
        self,
        learner: str,
        inputs: Iterable[tuple[Mapping[str, FeatureValue] | None, str | None]],
        *,
        subject_ids: Sequence[str | None] | None = None,
        log: bool | None = None,
    ) -> list[Prediction]:
        """Predict ``(features, text)`` pairs, all with one version of ``learner`` (``subject_ids``: one per input)."""
        served = self.get(learner)
        logged = self.log if log is None else self._logged(log)
        if subject_ids is None:
            return [self._predict(served, features, text, None, logged) for features, text in inputs]
        pairs = list(inputs)
        if len(subject_ids) != len(pairs):
            raise ValueError(f"{len(subject_ids)} subject_ids for {len(pairs)} inputs")
        return [self._predict(served, f, t, s, logged) for (f, t), s in zip(pairs, subject_ids, strict=True)]

    def versions(self) -> dict[str, str]:
        """The version served per learner (for status pages)."""
        return {name: served.version for name, served in list(self._served.items())}

    def _logged(self, log: bool) -> bool:
        if log and not self.log:
            raise ValueError("this predictor was built with log=False: it has no producer to log with")
        return log

    def _predict(
        self,
        served: Served,
        features: Mapping[str, FeatureValue] | None,
        text: str | None,
        subject_id: str | None,
        logged: bool,
    ) -> Prediction:
        # The hot path: River's own call plus about a microsecond (no copies, no validation,
        # the tuple built directly); see bench/ for the comparison with predict_proba_one.
        if text is None:
            if features is None:
                raise ValueError("predict needs features or text")
            x = features if type(features) is dict else dict(features)
        else:
            x = with_text(features, text)
        pid = f"{self._id_prefix}{next(self._ids):x}"
        scorer = served.proba_scorer
        if scorer is not None:
            proba = scorer(x)
            label, best = None, -1.0
            for k, p in proba.items():  # the first most probable class, as River's predict_one picks it
                if p > best:
                    label, best = k, p
            prediction = _new_tuple(Prediction, (served.learner, pid, served.version, label, proba, None))
        else:
            label, probabilities = served.learner_obj.predict_with_proba(x)
            if probabilities is None:  # a regression: the label is the value
                prediction = _new_tuple(Prediction, (served.learner, pid, served.version, None, None, label))
            else:
                prediction = _new_tuple(Prediction, (served.learner, pid, served.version, label, probabilities, None))
        if logged:
            # A copy: the app may reuse its dict, and the log must hold what was served.
            self._enqueue((prediction, None if features is None else dict(features), text, subject_id))
        return prediction

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Load what is published, then follow announcements; with ``log``, start logging first."""
        try:
            if self._log is not None:
                await self._log.start()
            await self.live.start()
        except BaseException:
            await self._close()
            raise

    async def stop(self) -> None:
        """Stop following, send the predictions still waiting to be logged, close the clients."""
        await self.live.stop()
        await self._close()

    async def _close(self) -> None:
        try:
            if self._log is not None:
                await self._log.stop()
        finally:
            if self.own_store:
                await self.store.close()

    async def __aenter__(self) -> OnlinePredictor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_ready(self, learner: str, timeout: float = 60.0) -> Served:
        """Wait until a version of ``learner`` is served; ``ModelNotReady`` after ``timeout`` seconds."""
        return await self.live.wait_ready(learner, timeout)

    async def flush(self) -> None:
        """Send every prediction logged so far and wait for the broker to acknowledge them."""
        if self._log is not None:
            await self._log.flush()


def _not_logging(entry: LogEntry) -> None:
    raise RuntimeError("this predictor was built with log=False")


class SyncOnlinePredictor(BlockingClient[OnlinePredictor]):
    """Blocking wrapper around :class:`OnlinePredictor` for threaded apps.

    A private event loop runs in a daemon thread and follows the versions; ``predict``,
    ``predict_many``, ``get`` and ``versions`` run in the caller's thread and never wait
    on that loop (logging hands the entry over and returns).
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        learners: Iterable[str] | None,
        *,
        store: ModelStore,
        snapshot_key: bytes,
        log: bool = True,
        source: str = "learnloop-predictor",
        config: ServingConfig | None = None,
        topics: Topics | None = None,
        metrics: PredictorMetrics | None = None,
        own_store: bool = False,
    ) -> None:
        predictor = OnlinePredictor(
            kafka, learners, store=store, snapshot_key=snapshot_key, log=log, source=source, config=config,
            topics=topics, metrics=metrics, own_store=own_store,
        )  # fmt: skip
        super().__init__(predictor, "learnloop-predictor")

    @property
    def predictor(self) -> OnlinePredictor:
        return self._async

    def wait_ready(self, learner: str, timeout: float = 60.0) -> Served:
        return self._call(self._async.wait_ready(learner, timeout))

    def get(self, learner: str) -> Served:
        return self._async.get(learner)

    def predict(
        self,
        learner: str,
        features: Mapping[str, FeatureValue] | None = None,
        text: str | None = None,
        *,
        subject_id: str | None = None,
        log: bool | None = None,
    ) -> Prediction:
        return self._async.predict(learner, features, text, subject_id=subject_id, log=log)

    def predict_many(
        self,
        learner: str,
        inputs: Iterable[tuple[Mapping[str, FeatureValue] | None, str | None]],
        *,
        subject_ids: Sequence[str | None] | None = None,
        log: bool | None = None,
    ) -> list[Prediction]:
        return self._async.predict_many(learner, inputs, subject_ids=subject_ids, log=log)

    def versions(self) -> dict[str, str]:
        return self._async.versions()

    def flush(self) -> None:
        self._call(self._async.flush())
