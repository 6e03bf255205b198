"""Predicting over HTTP against the real thing: broker, Redis, a feedback worker process, the gateway.

The worker learns and publishes; the gateway follows the published versions and
answers. Every wait is for a condition, with a generous deadline: the machine is shared.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from schemas import ModelUpdate, PredictionEvent, parse_event
from streams.producer import EventProducer
from tests.conftest import worker_env
from tests.integration.util import start_worker, stop_worker, wait_for
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key, new_key
from workers.api.server import BackgroundServer
from workers.feedback.redis_store import RedisStore
from workers.serving.model_store import RedisModelStore
from workers.settings import Settings
from workers.store.engine import engine_for
from workers.store.feedback import FeedbackStore

pytestmark = pytest.mark.integration

APP, INGEST = new_key(), new_key()
LEARNERS = """
[learners.sea]
task = "binary"
model = "logistic_regression"
retrain_model = "sea-text"   # keeps every learned sample in SQL, features included: what the join gave it
[learners.idle]
task = "binary"
"""


def api_config() -> ApiConfig:
    return ApiConfig(keys=[
        ApiKey(name="shop-web", sha256=hash_key(APP), scopes=("predict",)),
        ApiKey(name="ingest", sha256=hash_key(INGEST), scopes=("read", "write")),
    ])


APP_KEY = {"X-API-Key": APP}
INGEST_KEY = {"X-API-Key": INGEST}


def feedback(n: int, *, flipped: bool = False, start: int = 0) -> list[dict[str, Any]]:
    """``n`` labelled examples of one rule on ``x`` in 0..9: ``x >= 5`` (or its opposite)."""
    return [{"learner": "sea", "features": {"x": float((start + i) % 10)}, "label": ((start + i) % 10 >= 5) != flipped}
            for i in range(n)]


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[None]:
    settings.learners_file.write_text(LEARNERS)
    log = tmp_path / "worker.log"
    proc = start_worker(worker_env(settings), log)
    try:
        yield
    finally:
        assert stop_worker(proc) == 0, log.read_text()[-3000:]


@pytest.fixture
def gateway(settings: Settings, worker: None) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(settings, api=api_config())) as server:
        yield server


@pytest.fixture
async def http(gateway: BackgroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        yield client


async def send(http: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 500):
        res = await http.post("/v1/feedback", json=events[i: i + 500], headers=INGEST_KEY)
        assert res.status_code == 202, res.text


async def served(http: httpx.AsyncClient, x: float, *, log: bool = False) -> dict[str, Any]:
    res = await http.post(f"/v1/predict/sea?log={str(log).lower()}", json={"features": {"x": x}}, headers=APP_KEY)
    assert res.status_code in (200, 409), res.text
    return dict(res.json())


async def wait_served(http: httpx.AsyncClient, x: float, check: Any, what: str) -> dict[str, Any]:
    latest: dict[str, Any] = {}

    async def ok() -> bool:
        nonlocal latest
        latest = await served(http, x)
        return "model_version" in latest and bool(check(latest))

    await wait_for(ok, timeout=120, every=0.2, what=f"{what} (last answer: {latest})")
    return latest


async def test_feedback_makes_the_gateway_serve_a_newer_version_that_predicts_accordingly(
    http: httpx.AsyncClient,
) -> None:
    unknown = await http.post("/v1/predict/nobody", json={"features": {"x": 1.0}}, headers=APP_KEY)
    assert unknown.status_code == 404 and "not in the learners file" in unknown.json()["detail"]
    idle = await http.post("/v1/predict/idle", json={"features": {"x": 1.0}}, headers=APP_KEY)
    assert idle.status_code == 409 and "has no model yet" in idle.json()["detail"]
    # The scopes, on the real server: the ingest key cannot predict, the app key cannot ingest.
    assert (await http.post("/v1/predict/sea", json={"features": {"x": 1.0}}, headers=INGEST_KEY)).status_code == 403
    assert (await http.post("/v1/feedback", json=feedback(1), headers=APP_KEY)).status_code == 403

    await send(http, feedback(400))
    first = await wait_served(http, 9.0, lambda a: a["label"] is True, "a version that learned x >= 5")
    assert (await served(http, 1.0))["label"] is False
    # The world turns: the same inputs now carry the opposite labels.
    await send(http, feedback(3000, flipped=True))
    later = await wait_served(http, 9.0, lambda a: a["label"] is False, "a version that learned the flip")
    assert int(later["model_version"]) > int(first["model_version"])
    assert (await served(http, 1.0))["label"] is True


async def test_feedback_by_prediction_id_is_learned_from_the_features_served(
    http: httpx.AsyncClient, settings: Settings, store: RedisStore
) -> None:
    await send(http, feedback(200))
    await wait_served(http, 9.0, lambda a: True, "a first version")
    res = await http.post("/v1/predict/sea", json=[{"features": {"x": 7.0, "tag": "served"}, "subject_id": "u-1"}],
                          headers=APP_KEY)
    assert res.status_code == 200, res.text
    [answer] = res.json()["predictions"]
    assert answer["logged"] is True and answer["subject_id"] == "u-1"

    async def logged() -> bool:
        return (await store.get_predictions([answer["prediction_id"]]))[0] is not None

    await wait_for(logged, timeout=60, what="the prediction logged and stored for the join")
    [blob] = await store.get_predictions([answer["prediction_id"]])
    event = parse_event(blob or b"", PredictionEvent)
    assert isinstance(event, PredictionEvent)
    assert (event.features, event.subject_id, event.model_version) == (
        {"x": 7.0, "tag": "served"}, "u-1", answer["model_version"])
    # The app's second call: the prediction's id and what the user did, nothing else.
    label = await http.post("/v1/feedback", headers=INGEST_KEY,
                            json={"learner": "sea", "prediction_id": answer["prediction_id"], "label": True})
    assert label.status_code == 202, label.text
    [event_id] = label.json()["event_ids"]
    samples = FeedbackStore(engine_for(settings.database, settings.data_dir))

    async def stored() -> bool:
        return any(s.event_id == event_id for s in samples.window(["sea"]))

    await wait_for(stored, timeout=120, what="the joined feedback learned and stored")
    [sample] = [s for s in samples.window(["sea"]) if s.event_id == event_id]
    assert (sample.features, sample.label) == ({"x": 7.0, "tag": "served"}, True)


async def test_a_restarted_gateway_serves_the_latest_version_from_its_first_request(
    settings: Settings, worker: None
) -> None:
    with BackgroundServer(create_app(settings, api=api_config())) as first:
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as http:
            await send(http, feedback(300))
            before = await wait_served(http, 9.0, lambda a: a["label"] is True, "a first version")
            await send(http, feedback(300, start=3))
            latest = await wait_served(http, 9.0, lambda a: int(a["model_version"]) > int(before["model_version"]),
                                       "a second version")
    started = time.monotonic()
    with BackgroundServer(create_app(settings, api=api_config())) as second:
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
            answer = await served(http, 9.0)  # the very first request: no waiting for an announcement
    assert int(answer["model_version"]) >= int(latest["model_version"]), answer
    assert time.monotonic() - started < 60


async def test_a_tampered_published_snapshot_is_refused_and_the_served_version_stays(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    await send(http, feedback(300))
    served_before = await wait_served(http, 9.0, lambda a: a["label"] is True, "a first version")
    models = RedisModelStore.from_config(settings.redis, settings.serving)
    try:
        found = await models.fetch_latest("sea")
        assert found is not None
        version, blob = found
        forged = version + 1000
        tampered = bytearray(blob)
        tampered[len(blob) // 2] ^= 0xFF  # one flipped byte in the pickle: the signature no longer verifies
        assert await models.publish("sea", forged, bytes(tampered)) == (True, forged)
        uri = models.uri("sea", forged)
    finally:
        await models.close()
    async with EventProducer(settings.kafka) as producer:
        await producer.send(ModelUpdate(model="sea", version=str(forged), kind="online-snapshot", uri=uri,
                                        alias="online", source="attacker"))

    async def refused() -> bool:
        text = (await http.get("/metrics")).text
        return 'learnloop_model_loads_total{learner="sea",outcome="refused_signature"} 1.0' in text

    await wait_for(refused, timeout=60, what="the gateway to refuse the tampered version")
    after = await served(http, 9.0)
    assert after["model_version"] == served_before["model_version"]
    assert after["label"] is True
