"""``POST /v1/models/{name}/predict`` against the real broker, MLflow registry and gateway.

Versions are tiny registered pyfunc models (models from code) that answer their own label
("A" for one version, "B" for the other), so which version answered is visible in every
answer. Rollout states are published on ``learnloop.rollouts`` as the controller does.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from schemas import ModelUpdate, PredictionEvent, RolloutEvent, parse_event
from streams.admin import ensure_topics
from streams.producer import EventProducer
from streams.topics import Topics
from tests.integration.util import read_topic, wait_for
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key, new_key
from workers.api.server import BackgroundServer
from workers.settings import Settings

pytestmark = pytest.mark.integration

MODEL = "sea-text"
APP, READER = new_key(), new_key()
APP_KEY, READ_KEY = {"X-API-Key": APP}, {"X-API-Key": READER}

TINY_MODEL = '''
import mlflow.models
import pandas as pd
from mlflow.pyfunc.model import PythonModel


class Tiny(PythonModel):
    def load_context(self, context):
        self.label = context.model_config["label"]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = model_input["text"].tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        return pd.DataFrame({"label": [self.label] * len(texts), "probability": [0.75] * len(texts)})


mlflow.models.set_model(Tiny())
'''


def register_tiny(settings: Settings, tmp: Path, labels: list[str]) -> list[str]:
    """Register one version per label; returns their version numbers."""
    from workers.trainer.registry import ModelRegistry

    registry = ModelRegistry(settings.mlflow, settings.data_dir)
    code = tmp / "tiny_model.py"
    code.write_text(TINY_MODEL)
    versions = []
    import mlflow

    with registry._fluent():
        for label in labels:
            with mlflow.start_run(experiment_id=registry.experiment_id):
                info = mlflow.pyfunc.log_model(name="model", python_model=str(code), model_config={"label": label},
                                               pip_requirements=["mlflow"])  # fmt: skip
            versions.append(str(mlflow.register_model(info.model_uri, MODEL).version))
    return versions


def update(version: str, alias: str) -> ModelUpdate:
    return ModelUpdate(source="test-trainer", model=MODEL, version=version, kind="fine-tuned",
                       uri=f"models:/{MODEL}/{version}", alias=alias, rollout=alias == "challenger")  # fmt: skip


def rollout(state: Any, mode: Any, share: float, *, step: int = 0, rid: str = "r1") -> RolloutEvent:
    return RolloutEvent(source="test-controller", model=MODEL, rollout_id=rid, state=state, mode=mode, step=step,
                        share=share, champion_version="1", challenger_version="2", reason="test")  # fmt: skip


@pytest.fixture
async def publish(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    topics = Topics(settings.kafka.topic_prefix)
    await ensure_topics(settings.kafka, topics.all())
    async with EventProducer(settings.kafka, topics=topics) as producer:

        async def send(*events: ModelUpdate | RolloutEvent) -> None:
            for event in events:
                if isinstance(event, RolloutEvent):  # keyed by model, as the controller sends it
                    await producer.send_raw(topics.rollouts, event.to_json(), key=MODEL.encode())
                else:
                    await producer.send(event)
            await producer.flush()

        yield send


@pytest.fixture
def gateway(settings: Settings, publish: Any) -> Iterator[BackgroundServer]:
    settings.learners_file.write_text("")
    api = ApiConfig(keys=[ApiKey(name="shop-web", sha256=hash_key(APP), scopes=("predict",)),
                          ApiKey(name="reader", sha256=hash_key(READER), scopes=("read",))])  # fmt: skip
    with BackgroundServer(create_app(settings, api=api)) as server:
        yield server


@pytest.fixture
async def http(gateway: BackgroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        yield client


def loaded(gateway: BackgroundServer) -> frozenset[str]:
    return frozenset(gateway.app.state.gateway.registered.subscriber.loaded_versions(MODEL))


async def predict(http: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await http.post(f"/v1/models/{MODEL}/predict", json=body, headers=headers or APP_KEY)


async def logged(settings: Settings, expect: int) -> list[PredictionEvent]:
    records = await read_topic(settings.kafka, Topics(settings.kafka.topic_prefix).predictions, expect=expect)
    return [parse_event(r.value, PredictionEvent) for r in records]


async def test_route_refuses_then_serves_every_body_form(
    settings: Settings, publish: Any, gateway: BackgroundServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    texts = {"texts": ["great", "awful"]}
    assert (await predict(http, texts)).status_code == 404  # nothing announced
    (v1,) = register_tiny(settings, tmp_path, ["A"])
    await publish(update(v1, "challenger"))

    async def challenger_known() -> bool:
        return (await predict(http, texts)).status_code != 404

    await wait_for(challenger_known, timeout=30, what="the model known")
    res = await predict(http, texts)
    assert res.status_code == 409 and "no champion" in res.json()["detail"]
    await publish(update(v1, "champion"))
    await wait_for(lambda: _true(loaded(gateway) == {v1}), timeout=120, what="version 1 loaded")

    assert (await http.post(f"/v1/models/{MODEL}/predict", json=texts)).status_code == 401
    assert (await predict(http, texts, **READ_KEY)).status_code == 403
    forms = [
        texts,
        {"dataframe_split": {"columns": ["text"], "data": [["great"], ["awful"]]}},
        {"dataframe_records": [{"text": "great"}, {"text": "awful"}]},
        {"inputs": {"text": ["great", "awful"]}},
        {"instances": [{"text": "great"}, {"text": "awful"}]},
        {"instances": ["great", "awful"]},
    ]
    ids = []
    for body in forms:
        res = await predict(http, body)
        assert res.status_code == 200, (body, res.text)
        answers = res.json()["predictions"]
        assert [(a["label"], a["probability"], a["model_version"]) for a in answers] == [("A", 0.75, v1)] * 2
        ids.extend(a["prediction_id"] for a in answers)
    wrong = await predict(http, {"inputs": {"txt": ["great"]}})
    assert wrong.status_code == 422 and "unknown column 'txt'" in wrong.json()["detail"]
    assert (await predict(http, {"texts": []})).status_code == 422
    assert (await predict(http, {"texts": ["a"], "subject_ids": ["u1", "u2"]})).status_code == 422

    events = {e.prediction_id: e for e in await logged(settings, expect=len(ids))}
    assert set(ids) <= set(events)
    assert {(events[i].learner, events[i].model, events[i].model_version, events[i].prediction) for i in ids} == {
        (MODEL, MODEL, v1, "A")
    }
    metrics = (await http.get("/metrics")).text
    assert f'learnloop_api_predictions_total{{learner="{MODEL}"}} {float(len(ids))}' in metrics
    doc = (await http.get("/openapi.json")).json()
    assert "/v1/models/{name}/predict" in doc["paths"] and "TextsBody" in doc["components"]["schemas"]


async def test_canary_share_is_within_tolerance_and_sticky_per_subject(
    settings: Settings, publish: Any, gateway: BackgroundServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert register_tiny(settings, tmp_path, ["A", "B"]) == ["1", "2"]
    await publish(update("1", "champion"), update("2", "challenger"), rollout("running", "canary", 25.0))
    await wait_for(lambda: _true(loaded(gateway) == {"1", "2"}), timeout=120, what="both versions loaded")

    subjects = [f"user-{i}" for i in range(2000)]
    first = await _versions_by_subject(http, subjects)
    share = sum(v == "2" for v in first.values()) / len(subjects)
    assert abs(share - 0.25) < 0.03, share
    assert await _versions_by_subject(http, subjects) == first  # sticky within the step

    await publish(rollout("running", "canary", 50.0, step=1))

    async def stepped() -> bool:
        return sum(v == "2" for v in (await _versions_by_subject(http, subjects[:400])).values()) > 150

    await wait_for(stepped, timeout=30, what="the 50 % step routed")
    second = await _versions_by_subject(http, subjects)
    assert abs(sum(v == "2" for v in second.values()) / len(subjects) - 0.5) < 0.035
    assert all(second[s] == "2" for s, v in first.items() if v == "2")  # nobody flips back at a larger share

    events = await logged(settings, expect=2 * 2000)
    arms = collections.Counter((e.arm, e.model_version, e.prediction) for e in events[:4000])
    assert set(arms) == {("champion", "1", "A"), ("challenger", "2", "B")}
    assert {e.rollout_id for e in events[:4000]} == {"r1"} and all(e.subject_id for e in events[:4000])


async def test_a_shadow_never_answers_and_its_copies_are_logged(
    settings: Settings, publish: Any, gateway: BackgroundServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    register_tiny(settings, tmp_path, ["A", "B"])
    await publish(update("1", "champion"), update("2", "challenger"), rollout("running", "shadow", 100.0))
    await wait_for(lambda: _true(loaded(gateway) == {"1", "2"}), timeout=120, what="both versions loaded")

    answered = []
    for i in range(0, 300, 50):
        res = await predict(http, {"texts": [f"text {j}" for j in range(i, i + 50)],
                                   "subject_ids": [f"user-{j}" for j in range(i, i + 50)]})  # fmt: skip
        assert res.status_code == 200, res.text
        answered.extend(res.json()["predictions"])
    assert {(a["model_version"], a["label"], a["arm"]) for a in answered} == {("1", "A", "champion")}

    events = await logged(settings, expect=600)
    shadows = {e.shadow_of: e for e in events if e.shadow_of is not None}
    assert set(shadows) == {a["prediction_id"] for a in answered}
    assert {(e.model_version, e.prediction, e.arm) for e in shadows.values()} == {("2", "B", "challenger")}
    assert all(e.prediction_id == f"{e.shadow_of}:shadow" for e in shadows.values())

    await publish(rollout("rolled_back", "shadow", 0.0))
    await wait_for(lambda: _true(loaded(gateway) == {"1"}), timeout=30, what="the challenger unloaded")


async def _versions_by_subject(http: httpx.AsyncClient, subjects: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(subjects), 500):
        chunk = subjects[i : i + 500]
        res = await predict(http, {"texts": ["some text"] * len(chunk), "subject_ids": chunk})
        assert res.status_code == 200, res.text
        for a in res.json()["predictions"]:
            assert a["label"] == {"1": "A", "2": "B"}[a["model_version"]]  # the version that answered, answered
            out[a["subject_id"]] = a["model_version"]
    return out


async def _true(value: bool) -> bool:
    return value


