"""The jobs API through the real gateway (its SQL store, a real broker and Redis) and a real trainer process.

A queued job cancelled through the API never starts; a job whose data cannot train a model fails with its
reason; the scopes guard each route and the OpenAPI document describes them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import worker_env
from tests.integration.util import start_worker, stop_worker, wait_for, write_learners
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key, new_key
from workers.api.server import BackgroundServer
from workers.settings import Settings
from workers.store.feedback import FeedbackStore
from workers.store.migrate import migrated_engine
from workers.store.samples import SampleIn
from workers.trainer.registry import ModelRegistry

pytestmark = pytest.mark.integration

OPERATOR, VIEWER = new_key(), new_key()
LEARNERS = """
[learners.sea]
task = "binary"
retrain_model = "sea-text"
"""


@pytest.fixture
def server(settings: Settings) -> Iterator[BackgroundServer]:
    write_learners(settings, LEARNERS)
    api = ApiConfig(keys=[ApiKey(name="ops", sha256=hash_key(OPERATOR), scopes=("jobs:read", "jobs:write")),
                          ApiKey(name="viewer", sha256=hash_key(VIEWER), scopes=("read", "jobs:read"))])
    with BackgroundServer(create_app(settings, api=api)) as s:
        yield s


@pytest.fixture
async def http(server: BackgroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        yield client


def key(k: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {k}"}


async def test_jobs_are_submitted_followed_cancelled_and_failed_with_their_reason(
    settings: Settings, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    body = {"model": "sea-text", "params": {"epochs": 1, "lora_r": 4}}
    assert (await http.post("/v1/jobs", json=body, headers=key(VIEWER))).status_code == 403
    assert (await http.post("/v1/jobs", json=body)).status_code == 401
    bad = await http.post("/v1/jobs", json={**body, "params": {"base_model": "/etc"}}, headers=key(OPERATOR))
    assert bad.status_code == 422  # only the listed training settings are a job's to change

    # No trainer yet: the job stays queued, and a cancelled one never starts.
    res = await http.post("/v1/jobs", json=body, headers=key(OPERATOR))
    assert res.status_code == 201, res.text
    queued = res.json()
    assert queued["status"] == "queued" and queued["learners"] == ["sea"] and queued["params"] == body["params"]
    clash = await http.post("/v1/jobs", json={**body, "params": {"epochs": 2}}, headers=key(OPERATOR))
    assert clash.status_code == 409  # other parameters do not join the queued job
    got = (await http.get(f"/v1/jobs/{queued['id']}", headers=key(VIEWER))).json()
    assert got["id"] == queued["id"] and got["progress"] is None
    cancelled = await http.delete(f"/v1/jobs/{queued['id']}", headers=key(OPERATOR))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["outcome"] == "cancelled"
    assert (await http.delete(f"/v1/jobs/{queued['id']}", headers=key(OPERATOR))).status_code == 409
    assert (await http.get("/v1/jobs/no-such-job", headers=key(VIEWER))).status_code == 404

    # The trainer runs the next job: no samples were stored, so the dataset is invalid and says why.
    trainer = start_worker(worker_env(settings) | {"LEARNLOOP_TRAINER__SETTLE_S": "0"},
                           tmp_path / "trainer.log", "trainer")
    try:
        res = await http.post("/v1/jobs", json={"model": "sea-text", "last_n": 100}, headers=key(OPERATOR))
        assert res.status_code == 201, res.text
        job_id = res.json()["id"]
        finished: dict[str, Any] = {}

        async def ended() -> bool:
            finished.update((await http.get(f"/v1/jobs/{job_id}", headers=key(VIEWER))).json())
            return finished["status"] not in ("queued", "running")

        await wait_for(ended, timeout=240, every=0.5, what="the trainer to finish the job")
    finally:
        stop_worker(trainer)
    assert finished["status"] == "failed" and finished["outcome"] == "dataset_invalid", finished
    assert "no samples in the window" in finished["error"]

    failed = (await http.get("/v1/jobs", params={"status": "failed", "model": "sea-text"},
                             headers=key(VIEWER))).json()
    assert [j["id"] for j in failed] == [job_id]
    listed = (await http.get("/v1/jobs", params={"status": "cancelled"}, headers=key(VIEWER))).json()
    assert [j["id"] for j in listed] == [queued["id"]] and listed[0]["started_at"] is None  # it never started

    doc = (await http.get("/openapi.json")).json()
    assert {"get", "post"} <= set(doc["paths"]["/v1/jobs"])
    assert {"get", "delete"} <= set(doc["paths"]["/v1/jobs/{job_id}"])
    assert "JobSubmission" in doc["components"]["schemas"]


async def test_a_running_job_cancelled_through_the_api_stops_and_registers_nothing(
    settings: Settings, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    FeedbackStore(migrated_engine(settings.database, settings.data_dir)).add_many([
        SampleIn(event_id=str(uuid.uuid4()), learner="sea", text=f"ticket {i} {'great' if i % 2 else 'awful'}",
                 label=i % 2 == 0, weight=1.0, source="test", occurred_at=t0 + timedelta(seconds=i))
        for i in range(240)
    ])
    log = tmp_path / "trainer.log"
    trainer = start_worker(worker_env(settings) | {"LEARNLOOP_TRAINER__SETTLE_S": "0"}, log, "trainer")
    try:
        # Many epochs of one-sample steps: the run is long; the trainer notices the cancel at its next step,
        # not at its next progress report (every 1/20 of the run).
        params = {"epochs": 100, "batch_size": 1, "patience": 100, "max_length": 16}
        res = await http.post("/v1/jobs", json={"model": "sea-text", "params": params}, headers=key(OPERATOR))
        assert res.status_code == 201, res.text
        job_id = res.json()["id"]

        async def training() -> bool:
            job = (await http.get(f"/v1/jobs/{job_id}", headers=key(VIEWER))).json()
            assert job["status"] in ("queued", "running"), job
            return bool(job["status"] == "running")

        await wait_for(training, timeout=300, every=0.5, what="the job to start training")
        res = await http.delete(f"/v1/jobs/{job_id}", headers=key(OPERATOR))
        assert res.status_code == 200 and res.json()["status"] == "cancelled"

        async def stopped() -> bool:
            return "cancelled on request" in log.read_text()

        await wait_for(stopped, timeout=120, every=0.5, what="the trainer to stop the cancelled job")
    finally:
        stop_worker(trainer)
    job = (await http.get(f"/v1/jobs/{job_id}", headers=key(VIEWER))).json()
    assert job["status"] == "cancelled" and job["result"] is None
    assert ModelRegistry(settings.mlflow, settings.data_dir).versions() == []  # nothing registered
