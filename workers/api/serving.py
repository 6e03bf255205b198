"""The gateway's served models: one ``OnlinePredictor`` (the SDK's) following every published learner.

The predictor loads the latest published version of each learner from the model store
while the gateway starts, before it takes a request, so a restarted gateway answers
from the latest version at once; then it follows the announcements. Versions are
verified (HMAC) before they are unpickled and swapped in whole; a refused one is
logged and counted (``learnloop_model_loads_total{outcome}`` on the gateway's
``/metrics``) and the served one stays.

Which learners exist: those declared in the learners file, and any other the worker
published (a learners file that is not strict gives undeclared learners the default
spec, and they are served like the rest). A name that is neither is unknown (404).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

from learners.config import LearnersConfig
from streams.metrics import PredictorMetrics
from streams.predictor import LearnerNotFollowed, ModelNotReady, OnlinePredictor, Prediction
from streams.producer import EventProducer
from workers.api.ports import LearnerUnknown, NoServedVersion
from workers.serving.model_store import RedisModelStore
from workers.settings import Settings


class PredictorModels:
    """``ServingModels`` on a started :class:`OnlinePredictor`."""

    def __init__(self, predictor: OnlinePredictor, learners: LearnersConfig, learners_file: str) -> None:
        self.predictor = predictor
        self.declared = [name for name in learners.declared if name != "default"]  # default is a fallback spec
        self.learners_file = learners_file

    def check(self, learner: str) -> None:
        try:
            self.predictor.get(learner)
        except LearnerNotFollowed:  # not with learners=None; kept should the gateway ever follow a subset
            raise LearnerUnknown(f"learner {learner!r} is not served by this gateway") from None
        except ModelNotReady:
            if learner not in self.declared:
                raise LearnerUnknown(
                    f"unknown learner {learner!r}: it is not in the learners file ({self.learners_file}) and no "
                    "version of it was ever published"
                ) from None
            raise NoServedVersion(
                f"learner {learner!r} has no model yet: no version has been published (it learns from its "
                "first feedback; a version follows within serving.publish_every_s)"
            ) from None

    def predict(
        self,
        learner: str,
        inputs: Sequence[tuple[Mapping[str, Any] | None, str | None]],
        *,
        subject_ids: Sequence[str | None],
        log: bool,
    ) -> list[Prediction]:
        try:
            return self.predictor.predict_many(learner, inputs, subject_ids=subject_ids, log=log)
        except ModelNotReady:  # check() passed, and versions are never withdrawn; say so if one was
            self.check(learner)
            raise

    def versions(self) -> dict[str, dict[str, Any]]:
        served = self.predictor.versions()
        names = [*self.declared, *sorted(set(served) - set(self.declared))]
        return {name: {"version": served.get(name)} for name in names}


async def start_serving(
    settings: Settings, owned: AsyncExitStack, *, producer: EventProducer | None, metrics: PredictorMetrics | None
) -> PredictorModels:
    """Start the predictor (it loads what is published before returning); ``owned`` stops it.

    ``producer`` is the gateway's own, shared for the prediction log; without one the
    predictor starts its own.
    """
    learners = settings.load_learners()
    store = RedisModelStore.from_config(settings.redis, settings.serving)
    owned.push_async_callback(store.close)
    predictor = OnlinePredictor(
        settings.kafka,
        None,  # every published learner: declared ones, and undeclared ones a non-strict file lets learn
        store=store,
        snapshot_key=settings.snapshot.key.get_secret_value().encode(),
        log=True,
        producer=producer,
        source=settings.source,
        config=settings.serving,
        metrics=metrics,
    )
    await predictor.start()
    owned.push_async_callback(predictor.stop)
    return PredictorModels(predictor, learners, str(settings.learners_file))
