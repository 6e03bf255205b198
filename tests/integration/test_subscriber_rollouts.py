"""The subscriber SDK follows rollouts too: in-process serving routes like the gateway does.

Stand-in models answer their own version, so each answer shows which version gave it.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pandas as pd
import pytest

from schemas import ModelUpdate, PredictionEvent, RolloutEvent
from streams.admin import ensure_topics
from streams.producer import EventProducer
from streams.subscriber import ModelSubscriber
from streams.topics import Topics
from tests.integration.util import wait_for
from workers.settings import Settings

pytestmark = pytest.mark.integration

MODEL = "sea-text"


class Versioned:
    def __init__(self, version: str, *, broken: bool = False) -> None:
        self.version, self.broken = version, broken

    def predict(self, inputs: Any) -> pd.DataFrame:
        if self.broken:
            raise RuntimeError("the shadow version cannot predict")
        n = len(inputs)
        return pd.DataFrame({"label": [f"v{self.version}"] * n, "probability": [0.5] * n})


def update(version: str, alias: str) -> ModelUpdate:
    return ModelUpdate(source="t", model=MODEL, version=version, kind="fine-tuned", uri=f"models:/{MODEL}/{version}",
                       alias=alias)  # fmt: skip


def rollout(state: Any, mode: Any, share: float) -> RolloutEvent:
    return RolloutEvent(source="t", model=MODEL, rollout_id="r7", state=state, mode=mode, step=0, share=share,
                        champion_version="1", challenger_version="2")  # fmt: skip


@pytest.fixture
async def publish(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    topics = Topics(settings.kafka.topic_prefix)
    await ensure_topics(settings.kafka, [topics.model_updates, topics.rollouts])
    async with EventProducer(settings.kafka, topics=topics) as producer:

        async def send(*events: ModelUpdate | RolloutEvent) -> None:
            for event in events:
                if isinstance(event, RolloutEvent):
                    await producer.send_raw(topics.rollouts, event.to_json(), key=MODEL.encode())
                else:
                    await producer.send(event)
            await producer.flush()

        yield send


async def test_predict_and_serve_route_a_canary_by_subject(settings: Settings, publish: Any) -> None:
    await publish(update("1", "champion"), update("2", "challenger"), rollout("running", "canary", 30.0))
    async with ModelSubscriber(settings.kafka, {MODEL: "champion"}, loader=lambda uri: Versioned(uri[-1])) as sub:
        await wait_for(lambda: _true(sub.loaded_versions(MODEL) == {"1", "2"}), timeout=30, what="both loaded")
        subjects = [f"u{i}" for i in range(1000)]
        answers = sub.serve(MODEL, ["hello"] * len(subjects), subject_ids=subjects)
        by_version = collections.Counter(a.model_version for a in answers)
        assert abs(by_version["2"] / len(subjects) - 0.30) < 0.04, by_version
        assert all(a.label == f"v{a.model_version}" and a.arm == {"1": "champion", "2": "challenger"}[a.model_version]
                   for a in answers)  # fmt: skip
        frame = sub.predict(MODEL, pd.DataFrame({"text": ["hello"] * len(subjects)}), subject_ids=subjects)
        assert frame["label"].tolist() == [a.label for a in answers]  # same arms, input order kept

        await publish(rollout("aborted", "canary", 30.0))
        await wait_for(lambda: _true(sub.loaded_versions(MODEL) == {"1"}), timeout=30, what="challenger unloaded")
        assert {a.model_version for a in sub.serve(MODEL, ["hello"] * 50, subject_ids=subjects[:50])} == {"1"}


async def test_a_shadow_only_predicts_a_logged_copy_even_when_it_fails(settings: Settings, publish: Any) -> None:
    await publish(update("1", "champion"), update("2", "challenger"), rollout("running", "shadow", 100.0))
    logged: list[PredictionEvent] = []

    def loader(uri: str) -> Versioned:
        return Versioned(uri[-1], broken=uri.endswith("/2"))

    async with ModelSubscriber(settings.kafka, {MODEL: "champion"}, loader=loader, on_prediction=logged.append) as sub:
        await wait_for(lambda: _true(sub.loaded_versions(MODEL) == {"1", "2"}), timeout=30, what="both loaded")
        answers = sub.serve(MODEL, ["a", "b", "c"], subject_ids=["u1", None, "u3"])
        assert {(a.model_version, a.label, a.arm) for a in answers} == {("1", "v1", "champion")}
        await wait_for(lambda: _true(len(logged) == 6), timeout=15, what="answers and shadow copies logged")
    copies = [e for e in logged if e.shadow_of is not None]
    assert sorted(e.shadow_of or "" for e in copies) == sorted(a.prediction_id for a in answers)
    assert all(e.failed and e.prediction is None and e.model_version == "2" and e.arm == "challenger" for e in copies)


async def _true(value: bool) -> bool:
    return value
