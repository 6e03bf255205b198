"""One timestamp spelling in every JSON output: each ``*_at`` field is RFC 3339 in UTC, with its offset.

The outputs are made by the real code paths: a feedback processor that learns a drifting stream commits
its learner statuses to a real Redis, read back by `learnloop learners --json` and the gateway's
``/v1/learners``; a training job goes through the SQL job store and `learnloop jobs --json`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from learners.knowledge.model import GraphBatch
from schemas import DriftEvent, RetrainRequest
from schemas.envelope import RFC3339_PATTERN
from tests.integration.test_graph_store import ADA, BATCH1
from tests.unit.test_feedback_processor import records, rig, sea_events
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key
from workers.api.memory import MemoryPublisher, MemoryStore
from workers.cli import app
from workers.feedback.redis_store import RedisStore
from workers.graph.factory import open_graph
from workers.lag.freshness import Freshness
from workers.lag.monitor import LagView
from workers.settings import Settings, load_settings
from workers.store.jobs import JobStore
from workers.store.migrate import migrated_engine

pytestmark = pytest.mark.integration

KEY = "ll_times-reader"


TIME_FIELDS = ("first_seen", "last_seen")  # the graph's times, named after the graph's properties


def times_in(doc: Any, path: str = "$") -> Iterator[tuple[str, object]]:
    """Every ``*_at`` field (and the graph's ``first_seen``/``last_seen``) of a JSON document, with where it is."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if isinstance(k, str) and (k.endswith("_at") or k in TIME_FIELDS) and v is not None:
                yield f"{path}.{k}", v
            yield from times_in(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from times_in(v, f"{path}[{i}]")


def assert_rfc3339_utc(doc: Any, *expected: str) -> None:
    found = dict(times_in(doc))
    for name in expected:  # the fields this output must carry, so the walk is never vacuous
        assert any(p.endswith(f".{name}") for p in found), (name, sorted(found))
    for where, value in found.items():
        assert isinstance(value, str) and re.match(RFC3339_PATTERN, value), (where, value)
        assert datetime.fromisoformat(value).utcoffset() == timedelta(0), (where, value)


@pytest.fixture
def times_settings(redis_url: str, tmp_path: Path) -> Settings:
    return load_settings(redis={"url": redis_url, "key_prefix": f"times:{uuid.uuid4().hex[:8]}:"},
                         data_dir=tmp_path / "data")


@pytest.fixture
async def learned(times_settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a feedback worker commits to a real Redis after learning a stream that drifts, read back."""
    store = RedisStore.from_config(times_settings.redis)
    try:
        r = rig()
        batch = records(sea_events())
        for i in range(0, len(batch), 500):
            result = await r.processor.process(r.state, batch[i : i + 500])
            for event in result.outputs:
                if isinstance(event, DriftEvent):
                    await store.record_drift(str(event.event_id), event.detected_at.timestamp(), event.to_json())
        await store.commit("fb", 0, snapshot=b"s", offset=len(batch), event_ids=[], statuses=r.state.statuses())
        return await store.learner_statuses(), await store.recent_drifts(10)
    finally:
        await store.close()


def env_of(settings: Settings) -> dict[str, str]:
    return {"LEARNLOOP_REDIS__URL": settings.redis.url, "LEARNLOOP_REDIS__KEY_PREFIX": settings.redis.key_prefix,
            "LEARNLOOP_DATA_DIR": str(settings.data_dir)}


def cli_json(settings: Settings, *args: str) -> Any:
    res = CliRunner().invoke(app, list(args), env=env_of(settings))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_learners_json_and_the_gateway_spell_every_time_alike(
    times_settings: Settings, learned: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    [row] = cli_json(times_settings, "learners", "--json")
    assert_rfc3339_utc(row, "snapshot_at", "last_event_at", "learned_at", "last_drift_at")
    assert isinstance(row["last_drift_n"], int) and row["last_drift_n"] == row["last_drift"]["n_seen"]

    # The gateway serves the same Redis rows; its own loop cannot share this test's Redis client.
    api = ApiConfig(keys=[ApiKey(name="times", sha256=hash_key(KEY), scopes=("read",))])
    statuses, drifts = learned
    client = TestClient(create_app(times_settings, api=api, producer=MemoryPublisher(),
                                   store=MemoryStore(statuses, drifts)))
    res = client.get("/v1/learners", headers={"X-API-Key": KEY})
    assert res.status_code == 200, res.text
    assert_rfc3339_utc(res.json(), "snapshot_at", "last_event_at", "learned_at", "last_drift_at", "detected_at")


def test_jobs_json_times_are_utc_with_their_offset(times_settings: Settings) -> None:
    # SQLite hands times back without their zone; the output must still say they are UTC.
    jobs = JobStore(migrated_engine(times_settings.database, times_settings.data_dir))
    job, _ = jobs.request(RetrainRequest(source="t", model="sea-text", reason="manual"), learners=["sea"])
    claimed = jobs.claim_next("w-1")
    assert claimed is not None and claimed.id == job.id
    jobs.succeed(job.id, {"version": "1"}, worker_id="w-1")
    [row] = cli_json(times_settings, "jobs", "--json")
    assert_rfc3339_utc(row, "created_at", "started_at", "finished_at")


def test_lag_freshness_times_are_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    fresh = Freshness(
        learner="sea", topic="fb", partition=0, last_event_at=datetime(2026, 1, 1, 14, tzinfo=plus_two),
        newest_event_at=datetime(2026, 1, 1, 14, 1, tzinfo=plus_two), behind=3, freshness_s=60.0, stale=False,
    )
    row = fresh.as_json()
    assert_rfc3339_utc(row, "last_event_at", "newest_event_at")
    assert row["last_event_at"] == "2026-01-01T12:00:00+00:00"
    view = LagView(time=1767268800.25, partitions=[], groups=[], learners=[fresh]).as_json()  # `lag --json`
    assert_rfc3339_utc(view, "sampled_at", "last_event_at")
    assert view["sampled_at"] == "2026-01-01T12:00:00.250000+00:00"


def test_graph_entity_json_times_are_utc(times_settings: Settings) -> None:
    graph = open_graph(times_settings)
    try:
        graph.write(GraphBatch.fold(BATCH1))  # the embedded graph hands its times back without a zone
    finally:
        graph.close()
    found = cli_json(times_settings, "graph", "entity", ADA.name, "--json")
    assert_rfc3339_utc(found, "first_seen", "last_seen")
