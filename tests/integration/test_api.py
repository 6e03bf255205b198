"""The gateway as a real uvicorn server on a loopback port, with the real broker and Redis."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from schemas import ConversationEvent, Envelope, FeedbackEvent, PredictionEvent, parse_event
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.util import ROOT, read_topic
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key, new_key
from workers.api.server import BackgroundServer
from workers.api.status import LagRows, lag_source
from workers.feedback.redis_store import RedisStore
from workers.settings import RedisConfig, Settings
from workers.stack.embedded import free_port

pytestmark = pytest.mark.integration

WRITER, READER = new_key(), new_key()
LIMIT = 32 * 1024
FEEDBACK = {"learner": "sea", "features": {"x1": 0.5, "plan": "pro"}, "label": True}


def api_config() -> ApiConfig:
    return ApiConfig(
        keys=[
            ApiKey(name="shop-web", sha256=hash_key(WRITER), scopes=("read", "write")),
            ApiKey(name="dashboard", sha256=hash_key(READER), scopes=("read",)),
        ],
        max_body_bytes=LIMIT,
        max_batch=100,
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[BackgroundServer]:
    """The gateway with its own producer and Redis store, started and stopped by its lifespan."""
    with BackgroundServer(create_app(settings, api=api_config())) as s:
        yield s


@pytest.fixture
async def http(server: BackgroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


def w(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {WRITER}", **(extra or {})}


async def test_auth_401_without_or_with_an_unknown_key_403_without_write(http: httpx.AsyncClient) -> None:
    assert (await http.post("/v1/feedback", json=FEEDBACK)).status_code == 401
    assert (await http.post("/v1/feedback", json=FEEDBACK, headers={"X-API-Key": new_key()})).status_code == 401
    assert (await http.post("/v1/feedback", json=FEEDBACK, headers={"X-API-Key": READER})).status_code == 403
    assert (await http.get("/v1/learners")).status_code == 401
    assert (await http.get("/v1/learners", headers={"X-API-Key": READER})).status_code == 200
    assert (await http.post("/v1/feedback", json=FEEDBACK, headers=w())).status_code == 202


async def test_oversized_bodies_are_413_declared_or_chunked(http: httpx.AsyncClient, settings: Settings) -> None:
    big = b'[{"pad": "' + b"x" * LIMIT + b'"}]'
    declared = await http.post("/v1/feedback", content=big, headers=w({"Content-Type": "application/json"}))
    assert declared.status_code == 413
    assert declared.json()["errors"][0]["reason"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(48):
            yield b" " * 1024

    chunked = await http.post("/v1/feedback", content=chunks(), headers=w())
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert chunked.status_code == 413
    # A body under the limit on the same server is fine.
    assert (await http.post("/v1/feedback", json=[FEEDBACK] * 10, headers=w())).status_code == 202


def contract_key(event: Envelope) -> bytes:
    if isinstance(event, FeedbackEvent):
        return event.learner.encode()
    if isinstance(event, PredictionEvent):
        return event.prediction_id.encode()
    assert isinstance(event, ConversationEvent)
    return event.conversation_id.encode()


async def test_invalid_batches_produce_nothing_and_valid_events_arrive_keyed(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    topics = Topics(settings.kafka.topic_prefix)
    bad = await http.post("/v1/feedback", json=[FEEDBACK, {"learner": "sea"}, FEEDBACK], headers=w())
    assert bad.status_code == 422
    assert [(e["index"], e["reason"]) for e in bad.json()["errors"]] == [(1, "validation")]

    bodies: dict[str, tuple[str, list[dict[str, Any]], type[Envelope]]] = {
        "/v1/feedback": (topics.feedback, [FEEDBACK, {**FEEDBACK, "learner": "ctr", "source": "checkout"}],
                         FeedbackEvent),
        "/v1/predictions": (topics.predictions, [{"prediction_id": "p-1", "learner": "sea", "text": "hi",
                                                  "model_version": "3"}], PredictionEvent),
        "/v1/conversations": (topics.conversations, [{"conversation_id": "c-1", "turn": 0, "role": "user",
                                                      "text": "Ada met Babbage in London."}], ConversationEvent),
    }
    for path, (topic, items, model) in bodies.items():
        res = await http.post(path, json=items, headers=w())
        assert res.status_code == 202, res.text
        ids = res.json()["event_ids"]
        # On feedback, one more than sent: the read waits out its timeout, proving the rejected batch left nothing.
        expect = len(items) + 1 if topic == topics.feedback else len(items)
        records = await read_topic(settings.kafka, topic, expect=expect, timeout=4 if expect > len(items) else 60)
        events = [parse_event(r.value, model) for r in records]
        assert sorted(str(e.event_id) for e in events) == sorted(ids)
        assert all(r.key == contract_key(e) for r, e in zip(records, events, strict=True))
        by_id = {str(e.event_id): e for e in events}
        assert [by_id[i].source for i in ids] == [item.get("source", "shop-web") for item in items]


async def test_readyz_is_200_then_503_when_redis_is_unreachable(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    ready = await http.get("/readyz")
    assert (ready.status_code, ready.json()["checks"]) == (200, {"broker": "ok", "redis": "ok"})
    closed = settings.model_copy(update={"redis": RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0")})
    with BackgroundServer(create_app(closed, api=api_config())) as other:
        async with httpx.AsyncClient(base_url=other.url, timeout=30) as client:
            res = await client.get("/readyz")
            learners = await client.get("/v1/learners", headers={"X-API-Key": READER})
    assert res.status_code == 503
    assert res.json()["failed"] == ["redis"]
    assert res.json()["checks"]["broker"] == "ok"
    assert "Connection" in res.json()["checks"]["redis"]
    assert learners.status_code == 503


async def test_learners_come_from_redis(http: httpx.AsyncClient, store: RedisStore) -> None:
    status = {"name": "sea", "task": "binary", "n_learned": 4000, "metrics": {"rolling_accuracy": 0.87},
              "drifts": 1, "last_drift": {"n_seen": 2048}}
    await store.commit("t", 0, snapshot=b"s", offset=10, event_ids=[], statuses={"sea": status})
    res = await http.get("/v1/learners", headers={"X-API-Key": READER})
    assert res.status_code == 200
    [got] = res.json()["learners"]
    assert {k: got[k] for k in status} == status


async def test_lag_models_metrics_and_the_openapi_document(
    server: BackgroundServer, http: httpx.AsyncClient, settings: Settings
) -> None:
    row = {"group": "learnloop-feedback", "topic": Topics(settings.kafka.topic_prefix).feedback, "lag": 3}

    def fake() -> LagRows:
        async def rows() -> list[Any]:
            return [row]

        return rows

    server.app.dependency_overrides[lag_source] = fake
    assert (await http.get("/v1/lag", headers={"X-API-Key": READER})).json() == {"rows": [row]}
    models = (await http.get("/v1/models", headers={"X-API-Key": READER})).json()
    assert models["versions"] == [] and models["note"].startswith("no model registry yet")
    await http.post("/v1/feedback", json=FEEDBACK, headers=w())
    metrics = (await http.get("/metrics")).text
    feedback_topic = Topics(settings.kafka.topic_prefix).feedback
    assert f'learnloop_api_events_produced_total{{topic="{feedback_topic}"}} 1.0' in metrics
    assert 'learnloop_api_requests_total{method="GET",route="/v1/lag",status="200"} 1.0' in metrics
    doc = (await http.get("/openapi.json")).json()
    assert "FeedbackEvent" in doc["components"]["schemas"]
    assert (await http.get("/docs")).status_code == 200


async def test_models_are_the_registered_versions_with_their_aliases(settings: Settings, tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the model registry needs the train extra")
    from workers.trainer.registry import ModelRegistry

    registry = ModelRegistry(settings.mlflow, settings.data_dir)
    artifacts = tmp_path / "model"
    artifacts.mkdir()
    registry.client.create_registered_model("sea-text")
    for _ in range(2):
        registry.client.create_model_version("sea-text", source=artifacts.as_uri())
    registry.set_alias("sea-text", "champion", "2")

    with BackgroundServer(create_app(settings, api=api_config())) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            res = await client.get("/v1/models", headers={"X-API-Key": READER})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["note"] is None
    assert [(v["name"], v["version"], v["aliases"]) for v in body["versions"]] == [
        ("sea-text", "1", []), ("sea-text", "2", ["champion"])
    ]


async def test_run_api_serves_until_sigterm_then_exits_cleanly(settings: Settings, tmp_path: Path) -> None:
    """``run_api`` as its own process (what ``learnloop worker api`` runs): serve, produce, stop on SIGTERM."""
    port = free_port()
    script = (
        "from workers.api.config import ApiConfig, ApiKey\n"
        "from workers.api.server import run_api\n"
        "from workers.settings import load_settings\n"
        f"key = ApiKey(name='proc', sha256='{hash_key(WRITER)}', scopes=('read', 'write'))\n"
        f"run_api(load_settings(), api=ApiConfig(port={port}, keys=[key]))\n"
    )
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=worker_env(settings), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
            turn = {"conversation_id": "c-9", "turn": 0, "role": "user", "text": "Grace Hopper visited Harvard."}
            res = await client.post("/v1/conversations", json=turn, headers=w())
            assert res.status_code == 202, res.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    [record] = await read_topic(settings.kafka, Topics(settings.kafka.topic_prefix).conversations, expect=1)
    event = parse_event(record.value, ConversationEvent)
    assert (record.key, event.source, str(event.event_id)) == (b"c-9", "proc", res.json()["event_ids"][0])


def test_run_api_fails_in_one_line_when_the_broker_is_unreachable(settings: Settings) -> None:
    from schemas.errors import StoreUnavailable
    from streams.config import KafkaConfig
    from workers.api.server import run_api

    nowhere = settings.model_copy(
        update={"kafka": KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)}
    )
    with pytest.raises(StoreUnavailable, match="the gateway did not start"):
        run_api(nowhere, api=ApiConfig(port=free_port()))
