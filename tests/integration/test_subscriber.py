"""The subscriber SDK against the real broker: catch-up, swaps, what it ignores, atomicity.

Most tests load stand-in models (a loader returning an object that predicts
its own version); the last one serves a real registered MLflow model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import ModelUpdate
from streams.admin import ensure_topics
from streams.config import KafkaConfig
from streams.producer import EventProducer, SyncEventProducer
from streams.subscriber import ModelNotReady, ModelSubscriber, SyncModelSubscriber
from streams.topics import Topics
from tests.integration.util import wait_for
from workers.settings import Settings

pytestmark = pytest.mark.integration

MODEL = "sea-text"


class StandIn:
    """A stand-in model built in steps by its loader: half-built, it would answer ``complete=False``."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.parts: list[int] = []
        self.complete = False

    def predict(self, inputs: list[str]) -> list[tuple[str, bool, int]]:
        return [(self.version, self.complete, len(self.parts)) for _ in inputs]


class StandInLoader:
    def __init__(self, *, broken: frozenset[str] = frozenset(), steps: int = 0, step_s: float = 0.0) -> None:
        self.broken, self.steps, self.step_s = broken, steps, step_s
        self.loaded: list[str] = []

    def __call__(self, uri: str) -> StandIn:
        version = uri.rsplit("/", 1)[1]
        self.loaded.append(version)
        if version in self.broken:
            raise OSError(f"cannot read {uri}")
        model = StandIn(version)
        for i in range(self.steps):
            model.parts.append(i)
            time.sleep(self.step_s)
        model.complete = True
        return model


def update(version: int | str, *, model: str = MODEL, alias: str = "champion") -> ModelUpdate:
    return ModelUpdate(
        source="test-trainer",
        model=model,
        version=str(version),
        kind="fine-tuned",
        uri=f"models:/{model}/{version}",
        alias=alias,
        metrics={"f1": 0.9},
    )


@pytest.fixture
async def publish(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    await ensure_topics(settings.kafka, [Topics(settings.kafka.topic_prefix).model_updates])
    async with EventProducer(settings.kafka) as producer:

        async def send(*events: ModelUpdate | bytes) -> None:
            for event in events:
                if isinstance(event, bytes):
                    await producer.send_raw(producer.topics.model_updates, event, key=MODEL.encode())
                else:
                    await producer.send(event)
            await producer.flush()

        yield send


async def served_version(sub: ModelSubscriber, version: str, timeout: float = 15.0) -> None:
    async def check() -> bool:
        current = sub.current(MODEL)
        return current is not None and current.version == version

    await wait_for(check, timeout=timeout, every=0.05, what=f"version {version} served")


async def test_catches_up_to_the_latest_version_then_follows(settings: Settings, publish: Any) -> None:
    await publish(update(1), update(2), update(3))
    loader = StandInLoader()
    swaps: list[tuple[str, str]] = []
    sub = ModelSubscriber(
        settings.kafka, {MODEL: "champion"}, loader=loader, on_swap=lambda name, u: swaps.append((name, u.version))
    )
    async with sub:
        served = await sub.wait_ready(MODEL, timeout=60)
        assert served.version == "3"
        assert loader.loaded == ["3"]  # history is replayed, but only the latest version is loaded
        assert sub.predict(MODEL, ["a", "b"]) == [("3", True, 0)] * 2

        await publish(update(4))
        await served_version(sub, "4")
        assert loader.loaded == ["3", "4"]
        assert swaps == [(MODEL, "3"), (MODEL, "4")]
        current = sub.current(MODEL)
        assert current is not None and current.uri == f"models:/{MODEL}/4"


async def test_ignores_older_versions_other_models_other_aliases_and_bad_records(
    settings: Settings, publish: Any
) -> None:
    await publish(update(5))
    loader = StandInLoader()
    async with ModelSubscriber(settings.kafka, {MODEL: "champion", "ctr-text": "challenger"}, loader=loader) as sub:
        await sub.wait_ready(MODEL, timeout=60)
        await publish(
            update(4),  # older than the one served
            update(9, alias="challenger"),  # an alias this app does not follow for this model
            update(9, model="other-text"),  # a model it does not follow
            update(9, model="ctr-text", alias="champion"),
            b"{not json",
            b'{"schema": "model-update/1", "model": "sea-text"}',
            update(5),  # the same version again
            update(6),
        )
        await served_version(sub, "6")
        assert loader.loaded == ["5", "6"]
        assert sub.skipped_records == 2
        assert sub.current("ctr-text") is None
        with pytest.raises(ModelNotReady, match="not followed"):
            sub.predict("other-text", ["x"])


async def test_a_version_that_fails_to_load_leaves_the_old_one_serving(settings: Settings, publish: Any) -> None:
    await publish(update(1), update(2))
    loader = StandInLoader(broken=frozenset({"2", "4"}))
    async with ModelSubscriber(settings.kafka, {MODEL: "champion"}, loader=loader) as sub:
        # At start there is nothing to keep: the newest loadable announced version serves.
        assert (await sub.wait_ready(MODEL, timeout=60)).version == "1"
        assert loader.loaded == ["2", "1"]

        await publish(update(3))
        await served_version(sub, "3")
        await publish(update(4))
        await wait_for(lambda: _true(loader.loaded[-1:] == ["4"]), timeout=60, what="version 4 tried")
        assert sub.predict(MODEL, ["x"]) == [("3", True, 0)]
        assert sub.load_failures == {MODEL: 2}

        await publish(update(5))  # a later good version still gets through
        await served_version(sub, "5")


async def test_predict_before_anything_is_loaded_raises_model_not_ready(settings: Settings) -> None:
    # No topic yet: nothing was ever announced under this prefix.
    async with ModelSubscriber(settings.kafka, {MODEL: "champion"}, loader=StandInLoader()) as sub:
        with pytest.raises(ModelNotReady, match="no version of 'sea-text'"):
            sub.predict(MODEL, ["x"])
        with pytest.raises(ModelNotReady, match=r"within 0\.3s"):
            await sub.wait_ready(MODEL, timeout=0.3)
        await ensure_topics(settings.kafka, [sub.topics.model_updates])
        async with EventProducer(settings.kafka) as producer:
            await producer.send(update(1))
        assert (await sub.wait_ready(MODEL, timeout=60)).version == "1"


async def test_concurrent_predictions_never_see_a_half_loaded_model(settings: Settings, publish: Any) -> None:
    await publish(update(1))
    loader = StandInLoader(steps=20, step_s=0.002)
    async with ModelSubscriber(settings.kafka, {MODEL: "champion"}, loader=loader) as sub:
        await sub.wait_ready(MODEL, timeout=60)
        stop = threading.Event()
        seen: list[list[tuple[str, bool, int]]] = [[] for _ in range(4)]

        def hammer(out: list[tuple[str, bool, int]]) -> None:
            while not stop.is_set():
                out.extend(sub.predict(MODEL, ["x"]))

        threads = [threading.Thread(target=hammer, args=(out,)) for out in seen]
        for t in threads:
            t.start()
        try:
            for version in range(2, 9):
                await publish(update(version))
                await served_version(sub, str(version))
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        for out in seen:
            assert out, "a thread got no predictions"
            assert {(complete, parts) for _, complete, parts in out} == {(True, 20)}
            versions = [int(v) for v, _, _ in out]
            assert versions == sorted(versions)  # each caller only ever moves forward
        assert {v for out in seen for v, _, _ in out} >= {"1", "8"}


def test_sync_subscriber_serves_threaded_apps_and_commits_for_lag_tools(settings: Settings, unique: str) -> None:
    asyncio.run(ensure_topics(settings.kafka, [Topics(settings.kafka.topic_prefix).model_updates]))
    with SyncEventProducer(settings.kafka) as producer:
        producer.send(update(1))
        producer.flush()
    group = f"serving-{unique}"
    with SyncModelSubscriber(settings.kafka, {MODEL: "champion"}, loader=StandInLoader(), group_id=group) as sub:
        assert sub.wait_ready(MODEL, timeout=60).version == "1"
        assert sub.predict(MODEL, ["x"]) == [("1", True, 0)]
        with SyncEventProducer(settings.kafka) as producer:
            producer.send(update(2))
        deadline = time.monotonic() + 60
        while sub.get(MODEL).version != "2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sub.get(MODEL).version == "2"
    committed = asyncio.run(_committed_total(settings.kafka, group, sub.subscriber.topics.model_updates))
    assert committed == 2  # both records applied, whichever partitions they went to


async def test_serves_a_registered_mlflow_model_end_to_end(
    settings: Settings, publish: Any, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from tests.integration.test_registry import classifier_dir, new_registry
    from workers.trainer.registry import code_version, model_update

    registry = new_registry(tmp_path_factory, settings.data_dir)
    with registry.start_run("job-e2e", MODEL, {"lr": 2e-4}) as run:
        version = registry.register(run, classifier_dir(tmp_path_factory), MODEL)
    registry.set_alias(MODEL, "champion", version)
    await publish(
        model_update(
            MODEL,
            version,
            "champion",
            {"f1": 0.9},
            parent_version=None,
            data_window=None,
            n_samples=120,
            code_version=code_version(),
            source="trainer",
        )
    )

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)  # how a serving app finds the registry
    async with ModelSubscriber(settings.kafka, {MODEL: "champion"}) as sub:  # the default (MLflow) loader
        served = await sub.wait_ready(MODEL, timeout=60)
        assert served.version == version
        frame = sub.predict(MODEL, pd.DataFrame({"text": ["great", "awful"]}))
        assert list(frame.columns) == ["label", "probability"]
        assert {type(label) for label in frame["label"]} == {bool}
        assert sub.predict(MODEL, ["great", "awful"])["label"].tolist() == frame["label"].tolist()


async def _committed_total(kafka: KafkaConfig, group: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **kafka.client_kwargs())
    await consumer.start()
    try:
        return sum([await consumer.committed(TopicPartition(topic, p)) or 0 for p in range(kafka.partitions)])
    finally:
        await consumer.stop()


async def _true(value: bool) -> bool:
    return value
