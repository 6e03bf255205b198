"""``SyncModelSubscriber``: the subscriber SDK for threaded apps (Flask, Django, scripts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schemas import ModelUpdate, RolloutEvent
from streams.config import KafkaConfig
from streams.loopthread import BlockingClient
from streams.routing import RoutedPrediction
from streams.subscriber import Loader, ModelSubscriber, OnPrediction, OnSwap, ServedModel
from streams.topics import Topics


class SyncModelSubscriber(BlockingClient[ModelSubscriber]):
    """Blocking wrapper around :class:`ModelSubscriber` for threaded serving apps.

    A private event loop runs in a daemon thread; ``predict``, ``get`` and
    ``current`` are thread-safe and do not touch that loop. ``on_swap`` runs in
    the subscriber's thread.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        models: Mapping[str, str],
        *,
        loader: Loader | None = None,
        topics: Topics | None = None,
        group_id: str | None = None,
        on_swap: OnSwap | None = None,
        max_fallbacks: int = 3,
        on_prediction: OnPrediction | None = None,
        source: str = "subscriber",
    ) -> None:
        subscriber = ModelSubscriber(
            kafka, models, loader=loader, topics=topics, group_id=group_id, on_swap=on_swap,
            max_fallbacks=max_fallbacks, on_prediction=on_prediction, source=source,
        )  # fmt: skip
        super().__init__(subscriber, "learnloop-subscriber")

    @property
    def subscriber(self) -> ModelSubscriber:
        return self._async

    def wait_ready(self, model: str, timeout: float = 60.0) -> ServedModel:
        return self._call(self._async.wait_ready(model, timeout))

    def get(self, model: str) -> ServedModel:
        return self._async.get(model)

    def predict(self, model: str, inputs: Any, *, subject_ids: Sequence[str | None] | None = None) -> Any:
        return self._async.predict(model, inputs, subject_ids=subject_ids)

    def serve(
        self, model: str, texts: Sequence[str], *, subject_ids: Sequence[str | None] | None = None
    ) -> list[RoutedPrediction]:
        return self._async.serve(model, texts, subject_ids=subject_ids)

    def rollout(self, model: str) -> RolloutEvent | None:
        return self._async.rollout(model)

    def current(self, model: str) -> ModelUpdate | None:
        return self._async.current(model)
