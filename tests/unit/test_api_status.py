"""Read routes with stand-ins: learners, models, lag (sync, async, absent), readiness, OpenAPI, the page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from schemas import FeedbackEvent
from workers.api import status as status_module
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.history import Point
from workers.api.keys import hash_key
from workers.api.memory import MemoryHistory, MemoryModels, MemoryPublisher, MemoryStore
from workers.api.status import LagRows, ModelListing, ModelSource, lag_source, model_source
from workers.settings import Settings, load_settings

KEY = "ll_unit-reader"
AUTH = {"Authorization": f"Bearer {KEY}"}
STATUS = {"name": "ctr", "task": "binary", "n_learned": 1200, "metrics": {"rolling_accuracy": 0.81},
          "drifts": 1, "last_drift": {"n_seen": 1024}}
DRIFT = {"schema": "drift/1", "learner": "ctr", "n_seen": 1024, "detector": "adwin"}
HISTORY = {"ctr": [Point(1_700_000_000.0, 600, "rolling_accuracy", 0.75),
                   Point(1_700_000_005.5, 1200, "rolling_accuracy", 0.81)]}


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.publisher = MemoryPublisher()
        self.store = MemoryStore([STATUS, {"name": "fresh", "n_learned": 0, "metrics": {}}], [DRIFT])
        self.history = MemoryHistory(HISTORY)
        self.settings = load_settings(data_dir=tmp_path)
        api = ApiConfig(keys=[ApiKey(name="dash", sha256=hash_key(KEY))], ready_timeout_s=0.5)
        self.app = create_app(self.settings, api=api, producer=self.publisher, store=self.store,
                              models=MemoryModels(["ctr"]), history=self.history)
        self.client = TestClient(self.app)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    with h.client:
        yield h


def test_learners_are_the_stored_statuses_and_recent_drifts(gw: Harness) -> None:
    res = gw.client.get("/v1/learners", headers=AUTH)
    assert res.status_code == 200
    body = res.json()
    assert (body["learners"][0], body["drifts"], body["serving"]) == (STATUS, [DRIFT], {"ctr": {"version": None}})


def test_a_learners_history_is_its_points_oldest_first_with_rfc3339_times(gw: Harness) -> None:
    res = gw.client.get("/v1/learners/ctr/history", headers=AUTH)
    assert res.status_code == 200
    assert res.json() == {
        "learner": "ctr", "every_s": 5.0, "limit": 720,
        "points": [{"at": "2023-11-14T22:13:20+00:00", "n": 600, "metric": "rolling_accuracy", "value": 0.75},
                   {"at": "2023-11-14T22:13:25.500000+00:00", "n": 1200, "metric": "rolling_accuracy",
                    "value": 0.81}],
    }
    # A learner with a status but nothing sampled yet has an empty history; an unknown one is 404.
    assert gw.client.get("/v1/learners/fresh/history", headers=AUTH).json()["points"] == []
    res = gw.client.get("/v1/learners/nobody/history", headers=AUTH)
    assert (res.status_code, res.json()) == (404, {"detail": "no learner named 'nobody'"})
    assert gw.client.get("/v1/learners/ctr/history").status_code == 401


def test_history_is_503_when_redis_is_down_or_no_history_is_kept(gw: Harness, tmp_path: Path) -> None:
    gw.history.down = True
    res = gw.client.get("/v1/learners/ctr/history", headers=AUTH)
    assert (res.status_code, res.json()) == (503, {"detail": "redis unavailable"})
    api = ApiConfig(keys=[ApiKey(name="dash", sha256=hash_key(KEY))])
    with TestClient(create_app(load_settings(data_dir=tmp_path), api=api, producer=MemoryPublisher(),
                               store=MemoryStore([STATUS]), models=MemoryModels(["ctr"]))) as bare:
        res = bare.get("/v1/learners/ctr/history", headers=AUTH)
    assert (res.status_code, res.json()) == (503, {"detail": "this gateway keeps no learner history"})


def test_learners_are_503_when_redis_is_down(gw: Harness) -> None:
    gw.store.down = True
    res = gw.client.get("/v1/learners", headers=AUTH)
    assert (res.status_code, res.json()) == (503, {"detail": "redis unavailable"})


def test_models_come_from_the_model_source(gw: Harness) -> None:
    versions = [{"name": "sea-text", "version": "2", "aliases": ["champion"], "metrics": {"f1": 0.9}}]

    def fake() -> ModelSource:
        async def listing() -> ModelListing:
            return ModelListing(versions)

        return listing

    gw.app.dependency_overrides[model_source] = fake
    assert gw.client.get("/v1/models", headers=AUTH).json() == {"versions": versions, "note": None}


def test_models_say_so_when_there_is_no_registry_yet(gw: Harness) -> None:
    res = gw.client.get("/v1/models", headers=AUTH)
    assert res.status_code == 200
    assert res.json()["versions"] == []
    assert res.json()["note"].startswith("no model registry yet")
    assert not (gw.settings.data_dir / "mlflow.db").exists()  # a GET creates nothing


def test_models_are_503_when_the_registry_fails(gw: Harness) -> None:
    def failing() -> ModelSource:
        async def listing() -> ModelListing:
            raise OSError("registry server unreachable")

        return listing

    gw.app.dependency_overrides[model_source] = failing
    res = gw.client.get("/v1/models", headers=AUTH)
    assert (res.status_code, res.json()) == (503, {"detail": "model registry unavailable"})


ROW = {"group": "learnloop-feedback", "topic": "learnloop.feedback", "partition": 0, "lag": 12, "lag_seconds": 0.4}


def test_lag_calls_the_lag_monitor_with_the_settings(gw: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []

    async def lag_rows(settings: Settings) -> list[dict[str, Any]]:
        seen.append(settings)
        return [ROW]

    monkeypatch.setattr(status_module, "lag_rows", lag_rows)
    res = gw.client.get("/v1/lag", headers=AUTH)
    assert (res.status_code, res.json()) == (200, {"rows": [ROW]})
    assert len(seen) == 1 and isinstance(seen[0], Settings)


def test_lag_source_can_be_overridden(gw: Harness) -> None:
    def fake() -> LagRows:
        async def rows() -> list[Any]:
            return [ROW]

        return rows

    gw.app.dependency_overrides[lag_source] = fake
    assert gw.client.get("/v1/lag", headers=AUTH).json() == {"rows": [ROW]}
    # The key is checked before the source is asked.
    assert gw.client.get("/v1/lag").status_code == 401


def test_readyz_names_what_failed(gw: Harness) -> None:
    assert gw.client.get("/readyz").json() == {
        "status": "ready", "checks": {"broker": "ok", "redis": "ok"}, "failed": []
    }
    gw.store.down = True
    res = gw.client.get("/readyz")
    assert res.status_code == 503
    assert res.json()["failed"] == ["redis"]
    assert res.json()["checks"]["broker"] == "ok"
    gw.publisher.failure = RedisConnectionError("x")  # any exception type counts as a failed probe
    assert gw.client.get("/readyz").json()["failed"] == ["broker", "redis"]


def test_healthz_is_always_ok(gw: Harness) -> None:
    gw.store.down = True
    assert gw.client.get("/healthz").json() == {"status": "ok"}


def test_openapi_describes_every_route_and_the_event_bodies(gw: Harness) -> None:
    doc = gw.client.get("/openapi.json").json()
    assert set(doc["paths"]) >= {"/v1/feedback", "/v1/predictions", "/v1/conversations", "/v1/learners",
                                 "/v1/learners/{name}/history", "/v1/models", "/v1/lag", "/v1/rollouts", "/healthz",
                                 "/readyz",
                                 "/metrics"}
    history = doc["paths"]["/v1/learners/{name}/history"]["get"]
    assert history["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MetricHistory"}
    assert {"404", "503"} <= set(history["responses"])
    assert doc["components"]["schemas"]["MetricPoint"]["required"] == ["at", "n", "metric", "value"]
    body = doc["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0] == {"$ref": "#/components/schemas/FeedbackEvent"}
    feedback = doc["components"]["schemas"]["FeedbackEvent"]
    assert "source" not in feedback.get("required", [])
    # The request schema accepts what the gateway accepts (an event without source included).
    validator = jsonschema.Draft202012Validator({**body, "components": doc["components"]})
    event = FeedbackEvent(source="x", learner="ctr", text="hi", rating=5).to_dict()
    del event["source"]
    validator.validate(event)
    validator.validate([event, event])
    assert not validator.is_valid({"learner": "ctr"})
    assert {"bearer", "apiKey"} <= set(doc["components"]["securitySchemes"])
    assert gw.client.get("/docs").status_code == 200


def test_root_redirects_to_the_status_page_keeping_the_query(gw: Harness) -> None:
    res = gw.client.get("/?key=abc&refresh=2", follow_redirects=False)
    assert (res.status_code, res.headers["location"]) == (307, "status?key=abc&refresh=2")


def test_the_status_page_is_self_contained(gw: Harness) -> None:
    page = gw.client.get("/status")
    script = gw.client.get("/static/status.js")
    assert page.headers["content-type"].startswith("text/html")
    assert script.headers["content-type"].startswith("text/javascript")
    assert '<script src="static/status.js">' in page.text
    for text in (page.text, script.text):
        # No URL but the SVG namespace: nothing is fetched from outside the gateway.
        assert set(re.findall(r"https?://[^\s\"'`]+", text)) <= {"http://www.w3.org/2000/svg"}
    for route in ("v1/learners", "v1/lag", "v1/models"):
        assert f'"{route}"' in script.text
    assert "innerHTML" not in script.text  # server data goes in as text only


def test_rollouts_without_the_tables_is_a_503_that_says_what_to_do(gw: Harness, tmp_path: Path) -> None:
    db = tmp_path / "learnloop.db"
    assert gw.client.get("/v1/rollouts", headers=AUTH).json() == {"rollouts": []}
    assert not db.exists()  # a GET creates no database
    db.touch()  # a database the migrations never ran on
    res = gw.client.get("/v1/rollouts", headers=AUTH)
    assert res.status_code == 503, res.text
    assert res.json()["detail"].startswith("database unusable during listing rollouts: no such table: rollouts")
    assert "migrate upgrade" in res.json()["detail"]
