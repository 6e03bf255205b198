"""Serving a subscriber's models as their rollouts route: one version per input, shadows off the answer path.

Inputs are grouped by the version that answers them and each group is predicted in one call
(the registered text classifiers batch), then the answers come back in input order. A shadow
copy is predicted on a single background thread with a bounded backlog: a slow or failing
challenger never delays or changes an answer, and a full backlog drops copies (counted in
``shadows_dropped``) rather than grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas import ModelUpdate, PredictionEvent
from streams.routing import Route, RoutedPrediction, failed_event, new_prediction_id, route, rows, wanted_versions

if TYPE_CHECKING:
    from streams.subscriber import ModelSubscriber, ServedModel

log = logging.getLogger(__name__)

_SHADOW_BACKLOG = 64  # shadow batches waiting for the challenger; more are dropped


class RoutedServing:
    def __init__(
        self, subscriber: ModelSubscriber, *, on_prediction: Callable[[PredictionEvent], None] | None, source: str
    ) -> None:
        self.subscriber = subscriber
        self.on_prediction = on_prediction
        self.source = source
        self.shadows_dropped = 0
        self._shadow_pool: ThreadPoolExecutor | None = None
        self._shadow_backlog = 0
        self._shadow_lock = threading.Lock()

    def routes(self, model: str, keys: Sequence[str]) -> list[Route]:
        served = self.subscriber.get(model)  # ModelNotReady when nothing is loaded
        rollout = self.subscriber.rollout(model)
        loaded = self.subscriber.loaded_versions(model)
        return [route(rollout, key, served=served.version, loaded=loaded) for key in keys]

    def _model(self, model: str, version: str) -> ServedModel:
        found = self.subscriber.version(model, version)
        return found if found is not None else self.subscriber.get(model)  # unloaded in between: the served one

    def predict(self, model: str, inputs: Any, subject_ids: Sequence[str | None] | None) -> Any:
        if self.subscriber.rollout(model) is None or len(inputs) == 0:
            return self.subscriber.get(model).predict(inputs)
        keys = [s or new_prediction_id() for s in _subjects(subject_ids, len(inputs))]
        groups = _groups(self.routes(model, keys))
        if len(groups) == 1:
            return self._model(model, next(iter(groups))).predict(inputs)
        parts = [(positions, self._model(model, v).predict(_take(inputs, positions))) for v, positions in
                 groups.items()]  # fmt: skip
        return _merge(parts, len(inputs))

    def serve(
        self, model: str, texts: Sequence[str], subject_ids: Sequence[str | None] | None
    ) -> list[RoutedPrediction]:
        subjects = _subjects(subject_ids, len(texts))
        ids = [new_prediction_id() for _ in texts]
        routes = self.routes(model, [s or p for s, p in zip(subjects, ids, strict=True)])
        answers: list[RoutedPrediction | None] = [None] * len(texts)
        for version, positions in _groups(routes).items():
            served = self._model(model, version)
            batch = [texts[i] for i in positions]
            t0 = time.perf_counter()
            try:
                out = rows(served.predict(batch), len(batch))
            except Exception:
                ms = (time.perf_counter() - t0) * 1000
                for i in positions:
                    self._emit(failed_event(texts[i], prediction_id=ids[i], model=model, version=served.version,
                                            route=routes[i], source=self.source, subject_id=subjects[i],
                                            latency_ms=ms))  # fmt: skip
                raise
            ms = (time.perf_counter() - t0) * 1000
            for i, (label, probability) in zip(positions, out, strict=True):
                answers[i] = RoutedPrediction(ids[i], model, served.version, label, probability, routes[i].arm,
                                              routes[i].rollout_id, subjects[i], ms)  # fmt: skip
        done = [a for a in answers if a is not None]
        for answer, text in zip(done, texts, strict=True):
            self._emit(answer.event(text, source=self.source))
        shadowed = [i for i, r in enumerate(routes) if r.shadow_version is not None]
        if shadowed and self.on_prediction is not None:
            self._shadow(model, routes[shadowed[0]], [(done[i], texts[i]) for i in shadowed])
        return done

    def _emit(self, event: PredictionEvent) -> None:
        if self.on_prediction is None:
            return
        try:
            self.on_prediction(event)
        except Exception:  # logging must never cost an answer
            log.exception("on_prediction failed for %s", event.prediction_id)

    def _shadow(self, model: str, via: Route, batch: list[tuple[RoutedPrediction, str]]) -> None:
        with self._shadow_lock:
            if self._shadow_backlog >= _SHADOW_BACKLOG:
                self.shadows_dropped += len(batch)
                return
            self._shadow_backlog += 1
            if self._shadow_pool is None:
                self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="learnloop-shadow")
            pool = self._shadow_pool
        pool.submit(self._predict_shadow, model, via, batch)

    def _predict_shadow(self, model: str, via: Route, batch: list[tuple[RoutedPrediction, str]]) -> None:
        try:
            assert via.shadow_version is not None
            challenger = self.subscriber.version(model, via.shadow_version)
            if challenger is None:  # the rollout ended meanwhile
                return
            texts = [text for _, text in batch]
            t0 = time.perf_counter()
            try:
                out = rows(challenger.predict(texts), len(texts))
            except Exception:
                ms = (time.perf_counter() - t0) * 1000
                log.exception("%s shadow version %s failed to predict", model, challenger.version)
                for answer, text in batch:
                    self._emit(failed_event(text, prediction_id=f"{answer.prediction_id}:shadow", model=model,
                                            version=challenger.version, route=via, source=self.source,
                                            subject_id=answer.subject_id, latency_ms=ms,
                                            shadow_of=answer.prediction_id))  # fmt: skip
                return
            ms = (time.perf_counter() - t0) * 1000
            for (answer, text), (label, probability) in zip(batch, out, strict=True):
                copy = RoutedPrediction(f"{answer.prediction_id}:shadow", model, challenger.version, label,
                                        probability, "challenger", via.rollout_id, answer.subject_id, ms)  # fmt: skip
                self._emit(copy.event(text, source=self.source, shadow_of=answer.prediction_id))
        finally:
            with self._shadow_lock:
                self._shadow_backlog -= 1

    def close(self) -> None:
        with self._shadow_lock:
            pool, self._shadow_pool = self._shadow_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


async def pin_rollout_versions(sub: ModelSubscriber) -> None:
    """Load the versions running rollouts route to; unload those no rollout needs any more."""
    for model in list(sub.models):
        wanted = wanted_versions(sub.rollout(model))
        sub.unpin(model, keep=wanted)
        for version in sorted(wanted - sub.loaded_versions(model)):
            update = sub.announcement(model, version) or ModelUpdate(
                source="subscriber", model=model, version=version, kind="fine-tuned",
                uri=f"models:/{model}/{version}", alias="challenger",
            )  # fmt: skip
            try:
                loaded = await asyncio.to_thread(sub.loader, update.uri)
            except Exception:  # the champion keeps answering every input until the version loads
                sub.load_failures[model] = sub.load_failures.get(model, 0) + 1
                log.exception("%s version %s (rollout) failed to load; the champion answers", model, version)
                continue
            sub.pin(update, loaded)
            log.info("%s: version %s loaded for its rollout", model, version)


async def add_rollout_partitions(
    consumer: AIOKafkaConsumer, topic: str, tps: list[TopicPartition]
) -> list[TopicPartition]:
    """Read the rollout topic once it exists (a subscriber may start before the first rollout)."""
    try:
        parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
    except KafkaError:
        return tps
    if not parts:
        return tps
    positions = {tp: await consumer.position(tp) for tp in tps}
    added = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign([*tps, *added])
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    await consumer.seek_to_beginning(*added)
    log.info("following rollouts on %s", topic)
    return [*tps, *added]


def _subjects(subject_ids: Sequence[str | None] | None, n: int) -> list[str | None]:
    if subject_ids is None:
        return [None] * n
    if len(subject_ids) != n:
        raise ValueError(f"{len(subject_ids)} subject ids for {n} inputs")
    return list(subject_ids)


def _groups(routes: list[Route]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(routes):
        groups.setdefault(r.version, []).append(i)
    return groups


def _take(inputs: Any, positions: list[int]) -> Any:
    if hasattr(inputs, "iloc"):  # a DataFrame or Series
        return inputs.iloc[positions].reset_index(drop=True)
    return [inputs[i] for i in positions]


def _merge(parts: list[tuple[list[int], Any]], n: int) -> Any:
    """The outputs of each version's inputs back in input order (DataFrames or sequences)."""
    if all(hasattr(out, "iloc") for _, out in parts):
        import pandas as pd

        frames = [out.set_axis(positions) for positions, out in parts]
        return pd.concat(frames).sort_index().reset_index(drop=True)
    merged: list[Any] = [None] * n
    for positions, out in parts:
        for i, item in zip(positions, list(out), strict=True):
            merged[i] = item
    return merged
