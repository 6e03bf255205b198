"""``POST /v1/predict/{learner}`` with stand-ins: answers, logging, the predict scope, 404/409, input limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from learners.config import LearnerSpec
from learners.labels import Target
from learners.online import OnlineLearner
from schemas.envelope import MAX_FEATURES
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key
from workers.api.memory import MemoryModels, MemoryPublisher, MemoryServed, MemoryStore
from workers.settings import load_settings

PREDICTOR, WRITER, READER = "ll_unit-predictor", "ll_unit-writer", "ll_unit-reader"
KEYS = [
    ApiKey(name="shop-web", sha256=hash_key(PREDICTOR), scopes=("predict",)),
    ApiKey(name="ingest", sha256=hash_key(WRITER), scopes=("read", "write")),
    ApiKey(name="dashboard", sha256=hash_key(READER), scopes=("read",)),
]
AUTH = {"X-API-Key": PREDICTOR}


def trained(task: str = "binary") -> OnlineLearner:
    learner = OnlineLearner("ctr", LearnerSpec(task=task))  # type: ignore[arg-type]
    for i in range(300):
        x = float(i % 10)
        learner.learn_one({"x": x}, Target(y=x >= 5 if task == "binary" else 2.0 * x, weight=1.0))
    return learner


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.publisher = MemoryPublisher()
        self.models = MemoryModels(
            ["ctr", "price", "fresh"],
            {"ctr": MemoryServed("412", trained()), "price": MemoryServed("77", trained("regression"),
                                                                          classifier=False)},
        )
        api = ApiConfig(keys=KEYS, max_body_bytes=64 * 1024, max_batch=5)
        settings = load_settings(data_dir=tmp_path, kafka={"topic_prefix": "t."})
        self.app = create_app(settings, api=api, producer=self.publisher, store=MemoryStore(), models=self.models)
        self.client = TestClient(self.app)
        self.doc = self.app.openapi()

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        res = self.client.post(path, json=body, headers=AUTH if headers is None else headers)
        # Every answer is one the OpenAPI document declares, in the shape it declares.
        declared = self.doc["paths"]["/v1/predict/{learner}"]["post"]["responses"]
        assert str(res.status_code) in declared, res.text
        schema = declared[str(res.status_code)]["content"]["application/json"]["schema"]
        jsonschema.validate(res.json(), {**schema, "components": self.doc["components"]})
        return res


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    with h.client:
        yield h


def test_a_classifier_answers_label_probabilities_version_and_logs_what_it_served(gw: Harness) -> None:
    res = gw.post("/v1/predict/ctr", {"features": {"x": 9.0}, "subject_id": "u-7"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["learner"], body["model_version"], body["label"], body["logged"]) == ("ctr", "412", True, True)
    assert body["subject_id"] == "u-7" and body["value"] is None
    assert [p["label"] for p in body["probabilities"]] == [True, False]  # most likely first
    assert sum(p["probability"] for p in body["probabilities"]) == pytest.approx(1.0)
    [(prediction, features, text, subject)] = gw.models.logged
    assert (prediction.prediction_id, prediction.model_version, features, text, subject) == (
        body["prediction_id"], "412", {"x": 9.0}, None, "u-7")
    assert gw.publisher.records == []  # the predictor logs, off the request path; the ingest producer is not used


def test_a_regressor_answers_a_value(gw: Harness) -> None:
    body = gw.post("/v1/predict/price", {"features": {"x": 4.0}}).json()
    assert body["label"] is None and body["probabilities"] is None
    assert isinstance(body["value"], float) and body["model_version"] == "77"


def test_a_batch_is_answered_in_order_from_one_version(gw: Harness) -> None:
    batch = [{"features": {"x": 1.0}}, {"features": {"x": 8.0}}, {"text": "hello"}]
    res = gw.post("/v1/predict/ctr", batch)
    assert res.status_code == 200, res.text
    answers = res.json()["predictions"]
    assert [a["label"] for a in answers[:2]] == [False, True]
    assert {a["model_version"] for a in answers} == {"412"}
    assert len({a["prediction_id"] for a in answers}) == 3
    assert [p.prediction_id for p, _, _, _ in gw.models.logged] == [a["prediction_id"] for a in answers]
    assert gw.models.logged[2][2] == "hello"


def test_log_false_logs_nothing(gw: Harness) -> None:
    body = gw.post("/v1/predict/ctr?log=false", {"features": {"x": 9.0}}).json()
    assert body["logged"] is False and body["label"] is True
    assert gw.models.logged == []


def test_unknown_learner_is_404_and_a_learner_without_a_model_is_409(gw: Harness) -> None:
    missing = gw.post("/v1/predict/nobody", {"features": {"x": 1.0}})
    assert missing.status_code == 404
    assert "unknown learner 'nobody'" in missing.json()["detail"]
    fresh = gw.post("/v1/predict/fresh", {"features": {"x": 1.0}})
    assert fresh.status_code == 409
    assert "'fresh' has no model yet" in fresh.json()["detail"]
    assert gw.models.logged == []


def test_predicting_needs_the_predict_scope_which_write_does_not_give(gw: Harness) -> None:
    x = {"features": {"x": 1.0}}
    assert gw.client.post("/v1/predict/ctr", json=x).status_code == 401
    for other in (WRITER, READER):
        res = gw.client.post("/v1/predict/ctr", json=x, headers={"X-API-Key": other})
        assert res.status_code == 403
        assert res.json() == {"detail": "this key lacks the 'predict' scope"}
    # ... and a predict key does not ingest: write keys keep ingest to themselves.
    feedback = {"learner": "ctr", "features": {"x": 1.0}, "label": True}
    assert gw.client.post("/v1/feedback", json=feedback, headers=AUTH).status_code == 403
    assert gw.client.post("/v1/feedback", json=feedback, headers={"X-API-Key": WRITER}).status_code == 202


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({}, 422, "validation"),
        ({"features": {"x": "a" * 2000}}, 422, "validation"),
        ({"features": {f"f{i}": 1 for i in range(MAX_FEATURES + 1)}}, 422, "validation"),
        ({"features": {"x": 1.0}, "label": True}, 422, "validation"),
        ([], 422, "empty_batch"),
        ([{"features": {"x": 1.0}}] * 6, 413, "batch_too_large"),
        ("x", 422, "invalid_json"),
    ],
)
def test_inputs_have_the_limits_of_events_and_nothing_is_predicted_otherwise(
    gw: Harness, body: Any, status: int, reason: str
) -> None:
    res = gw.post("/v1/predict/ctr", body)
    assert res.status_code == status, res.text
    assert res.json()["errors"][0]["reason"] == reason
    assert gw.models.logged == []


def test_the_openapi_document_and_the_learners_route_show_the_served_versions(gw: Harness) -> None:
    post = gw.doc["paths"]["/v1/predict/{learner}"]["post"]
    assert {"200", "404", "409", "403"} <= set(post["responses"])
    assert any(p["name"] == "log" and p["in"] == "query" for p in post["parameters"])
    assert "PredictInput" in gw.doc["components"]["schemas"]
    serving = gw.client.get("/v1/learners", headers={"X-API-Key": READER}).json()["serving"]
    assert serving == {"ctr": {"version": "412"}, "price": {"version": "77"}, "fresh": {"version": None}}
