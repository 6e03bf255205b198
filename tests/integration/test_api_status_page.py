"""The status page in headless Chromium against a real gateway, broker and Redis: DOM after the JS ran, a PNG.

Needs Debian's ``chromium`` on PATH (``apt-get install chromium``); skipped without it.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.topics import Topics
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.deps import Gateway
from workers.api.keys import hash_key, new_key
from workers.api.memory import MemoryModels, MemoryServed
from workers.api.server import BackgroundServer
from workers.api.status import LagRows, ModelListing, ModelSource, lag_source, model_source
from workers.feedback.redis_store import RedisStore
from workers.settings import Settings

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install chromium)"),
]

READER = new_key()
WIDTH, HEIGHT = 1280, 900
STEPS = 12


def history(step: int) -> dict[str, dict[str, Any]]:
    """What the feedback worker would have written by poll ``step``: sea drifts at 6,400 and recovers."""
    n = 1000 * (step + 1)
    sea_acc = [0.74, 0.83, 0.87, 0.89, 0.9, 0.9, 0.62, 0.7, 0.79, 0.85, 0.88, 0.89][step]
    drifted = n > 6400
    return {
        "sea": {"name": "sea", "task": "binary", "model": "logistic_regression", "n_learned": n,
                "metrics": {"accuracy": 0.85, "rolling_accuracy": sea_acc}, "drifts": 2 if drifted else 1,
                "last_drift": {"n_seen": 6400 if drifted else 2600}},
        "ctr": {"name": "ctr", "task": "binary", "model": "hoeffding_tree", "n_learned": n // 2,
                "metrics": {"rolling_accuracy": 0.55 + 0.02 * step}, "drifts": 0, "last_drift": None},
        "price": {"name": "price", "task": "regression", "model": "linear_regression", "n_learned": 2 * n,
                  "metrics": {"rolling_mae": 3.0 / (1 + step)}, "drifts": 0, "last_drift": None},
    }


class Replay:
    """The gateway's Redis store, which writes the next step of ``history`` each time statuses are read.

    Each poll of the page then sees the learners move on, as they would under a live
    worker, deterministically; the statuses still go through Redis and come back from it.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads = 0

    async def learner_statuses(self) -> list[dict[str, Any]]:
        step = min(self.reads, STEPS - 1)
        self.reads += 1
        await self.inner.commit("t", 0, snapshot=b"", offset=step, event_ids=[], statuses=history(step))
        result: list[dict[str, Any]] = await self.inner.learner_statuses()
        return result

    async def recent_drifts(self, limit: int = 20) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.inner.recent_drifts(limit)
        return result

    async def ping(self) -> bool:
        return bool(await self.inner.ping())


VERSIONS = [
    {"name": "sea-text", "version": "1", "aliases": [], "created_at": "2024-05-01T12:00:00+00:00",
     "metrics": {"f1": 0.81}},
    {"name": "sea-text", "version": "2", "aliases": ["champion"], "created_at": "2024-05-02T12:00:00+00:00",
     "metrics": {"f1": 0.86, "accuracy": 0.88}},
    {"name": "sea-text", "version": "3", "aliases": ["challenger"], "created_at": "2024-05-03T12:00:00+00:00",
     "metrics": {"f1": 0.84}},
]


@pytest.fixture
def page_server(settings: Settings) -> Iterator[tuple[BackgroundServer, Replay]]:
    api = ApiConfig(keys=[ApiKey(name="dashboard", sha256=hash_key(READER))])
    app = create_app(settings, api=api)
    feedback = Topics(settings.kafka.topic_prefix).feedback
    lag = [{"group": "learnloop-feedback", "topic": feedback, "partition": p, "position": 5200 + p,
            "highwater": 5200 + p + lag, "lag": lag, "lag_seconds": lag / 900} for p, lag in enumerate((0, 840))]

    def lag_rows() -> LagRows:
        async def rows() -> list[Any]:
            return lag

        return rows

    def models() -> ModelSource:
        async def listing() -> ModelListing:
            return ModelListing(VERSIONS)

        return listing

    app.dependency_overrides[lag_source] = lag_rows
    app.dependency_overrides[model_source] = models
    with BackgroundServer(app) as server:
        gateway: Gateway = app.state.gateway
        replay = Replay(gateway.store)  # the store the lifespan opened, in the server's event loop
        gateway.store = replay
        gateway.models = MemoryModels(["sea", "ctr"], {"sea": MemoryServed("4242", None)})
        yield server, replay


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    argv = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
        "--virtual-time-budget=8000", *args, url,
    ]
    return subprocess.run(argv, capture_output=True, timeout=120, check=False)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_status_page_draws_learners_drifts_lag_and_models(
    page_server: tuple[BackgroundServer, Replay], store: RedisStore, tmp_path: Path
) -> None:
    server, replay = page_server
    for event_id, n_seen in (("d-1", 2600), ("d-2", 6400)):
        payload = f'{{"learner": "sea", "n_seen": {n_seen}, "detector": "adwin"}}'.encode()
        await store.record_drift(event_id, 1_700_000_000.0 + n_seen, payload)
    url = f"{server.url}/status?key={READER}&refresh=1"

    dom = await asyncio.to_thread(chromium, tmp_path, url, "--dump-dom")
    html = dom.stdout.decode()
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    for name in ("sea", "ctr", "price"):
        assert f'data-learner="{name}"' in html, html[-3000:]
    assert replay.reads >= 3, "the page did not poll"
    assert html.count("<polyline") == 3  # every learner has a line: the page kept a history of the polls
    assert html.count('class="drift"') >= 2  # sea's two drifts (history and last_drift) are marked
    assert "rolling_mae" in html
    assert 'id="lag-table"' in html and ">840<" in html
    assert 'data-model="sea-text"' in html and 'class="alias champion"' in html
    assert '<span class="served">serving <b>v4242</b></span>' in html  # what this gateway predicts with
    assert "serving <b>none yet</b>" in html and "serving <b>not declared</b>" in html
    assert '<span id="state" class="ok">live</span>' in html
    assert '<form id="keyform" hidden="">' in html

    replay.reads = 0
    shot = tmp_path / "status.png"
    result = await asyncio.to_thread(chromium, tmp_path, url, f"--screenshot={shot}")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    data = shot.read_bytes()
    assert png_size(data) == (WIDTH, HEIGHT)
    assert len(data) > 20_000  # a drawn page, not a blank one


async def test_status_page_asks_for_a_key_without_one(
    page_server: tuple[BackgroundServer, Replay], tmp_path: Path
) -> None:
    server, _ = page_server
    dom = await asyncio.to_thread(chromium, tmp_path, f"{server.url}/", "--dump-dom")
    html = dom.stdout.decode()
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    assert '<form id="keyform">' in html  # no longer hidden
    assert "needs a read key" in html
    assert "an API key is required" in html
