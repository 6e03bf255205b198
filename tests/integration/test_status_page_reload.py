"""The status page after a reload, in headless Chromium, against a real gateway, feedback worker, broker and Redis.

A real worker learns waves of events; the gateway samples the learners' statuses into their history; then
the gateway restarts and a fresh browser loads the page: the charts must be lines at once (the history came
from the server, not from polls in the tab). Layout is measured over the DevTools protocol at 1,400 px, and
a screenshot is checked pixel by pixel. Needs Debian's ``chromium`` on PATH (``apt-get install chromium``);
skipped without it. ``LEARNLOOP_TEST_SCREENSHOT=path.png`` keeps a copy of the screenshots.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas import FeedbackEvent
from streams.admin import ensure_topics
from streams.producer import EventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.browser import Chromium, png_rgb
from tests.integration.util import start_worker, stop_worker, wait_for
from tests.reference import sea_with_switch
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key, new_key
from workers.api.server import BackgroundServer
from workers.api.status import ModelListing, ModelSource, model_source
from workers.feedback.redis_store import RedisStore
from workers.lag.cli import PARTITION_COLUMNS
from workers.settings import Settings

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install chromium)"),
]

READER = new_key()
WIDTH, HEIGHT = 1400, 1000
WAVES, PER_WAVE = 16, 500
ACCENT = (0x25, 0x63, 0xEB)  # --accent, the charts' line colour
LEARNERS = """
[learners.sea]
task = "binary"
model = "logistic_regression"
[learners.price]
task = "regression"
model = "linear_regression"
"""

VERSIONS = [
    {"name": "sea-text", "version": "1", "aliases": [], "created_at": "2024-05-01T12:00:00+00:00",
     "metrics": {"f1": 0.81}},
    {"name": "sea-text", "version": "2", "aliases": ["champion"], "created_at": "2024-05-02T12:00:00+00:00",
     "metrics": {"f1": 0.86, "accuracy": 0.88}},
]


KAFKA_ROWS = [
    {"group": "learnloop-feedback-production-eu-west-1", "topic": "acme-prod.learnloop.feedback", "partition": p,
     "current_offset": 1_234_567_890 + p, "log_end_offset": 1_234_600_000, "lag": 32_110 - p,
     "consumer_id": f"learnloop-feedback-worker-{p}-3f2a9b1c-5d4e-4f6a-8b7c-9d0e1f2a3b4c",
     "host": "/10.244.123.234", "client_id": f"learnloop-feedback-worker-{p}", "time_lag_s": 3_725.25,
     "status": "WARN"}
    for p in range(3)
]


def api_config() -> ApiConfig:
    return ApiConfig(keys=[ApiKey(name="dashboard", sha256=hash_key(READER))], history_every_s=0.1)


def gateway(settings: Settings) -> BackgroundServer:
    app = create_app(settings, api=api_config())

    def models() -> ModelSource:  # MLflow is not part of this test
        async def listing() -> ModelListing:
            return ModelListing(VERSIONS)

        return listing

    app.dependency_overrides[model_source] = models
    return BackgroundServer(app)


def waves() -> list[list[FeedbackEvent]]:
    """SEA with an abrupt concept switch halfway (sea drifts), and a noisy linear target (price)."""
    rng = random.Random(3)
    sea = sea_with_switch(WAVES * PER_WAVE // 2, WAVES * PER_WAVE // 2)
    out = []
    for w in range(WAVES):
        wave = []
        for i in range(w * PER_WAVE, (w + 1) * PER_WAVE):
            x, y = sea[i]
            wave.append(FeedbackEvent(learner="sea", features=x, label=y, source="test"))
            if i % 2 == 0:
                z = rng.uniform(0, 10)
                wave.append(FeedbackEvent(learner="price", features={"z": z}, label=3 * z + rng.gauss(0, 1),
                                          source="test"))
        out.append(wave)
    return out


async def learned(store: RedisStore) -> dict[str, int]:
    return {st["name"]: int(st["n_learned"]) for st in await store.learner_statuses()}


async def history_lengths(store: RedisStore, settings: Settings) -> dict[str, int]:
    return {name: int(await store.r.llen(f"{settings.redis.key_prefix}history:{name}")) for name in ("sea", "price")}


def accent_columns(rows: list[bytes], box: dict[str, float]) -> int:
    """How many pixel columns inside ``box`` hold the line colour (a line crosses most; a dot a handful)."""
    cols = set()
    x0, x1 = int(box["left"]) + 1, int(box["right"]) - 1
    for y in range(int(box["top"]) + 1, int(box["bottom"]) - 1):
        row = rows[y]
        for x in range(x0, x1):
            r, g, b = row[3 * x], row[3 * x + 1], row[3 * x + 2]
            if abs(r - ACCENT[0]) < 40 and abs(g - ACCENT[1]) < 40 and abs(b - ACCENT[2]) < 40:
                cols.add(x)
    return len(cols)


PAGE_FACTS = """(() => {
  const doc = document.documentElement;
  const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top,
                                                                bottom: r.bottom}; };
  return {
    scroll: [doc.scrollWidth, doc.clientWidth],
    sections: [...document.querySelectorAll("main section")].map(s => [s.id, s.scrollWidth, s.clientWidth]),
    lagHead: [...document.querySelectorAll("#lag-table th")].map(th => th.textContent),
    lagRows: [...document.querySelectorAll("#lag-table tbody tr")].map(
      tr => [...tr.children].map(td => td.textContent)),
    charts: Object.fromEntries([...document.querySelectorAll("[data-learner]")].map(card => {
      const line = card.querySelector("polyline");
      return [card.dataset.learner, {
        points: line ? line.getAttribute("points").trim().split(/\\s+/).length : 0,
        box: box(card.querySelector("svg.chart")),
        stats: card.querySelector(".stats").textContent,
        span: (card.querySelector("p.span") || {}).textContent || "",
        times: [...card.querySelectorAll("time")].map(t => t.getAttribute("datetime")),
        drifts: card.querySelectorAll("line.drift").length,
      }];
    })),
    state: document.getElementById("state").textContent,
    keyform: document.getElementById("keyform").hidden,
    models: document.querySelectorAll('#models-table tr[data-model="sea-text"]').length,
  };
})()"""


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    settings.learners_file.write_text(LEARNERS)
    proc = start_worker(worker_env(settings), tmp_path / "worker.log")
    try:
        yield proc
    finally:
        assert stop_worker(proc) == 0, (tmp_path / "worker.log").read_text()[-3000:]


async def test_status_page_charts_the_kept_history_after_a_reload_and_fits_1400_px(
    settings: Settings, store: RedisStore, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    total = {"sea": 0, "price": 0}
    with gateway(settings):
        async with EventProducer(settings.kafka) as producer:
            for wave in waves():
                await producer.send_many(wave)
                for ev in wave:
                    total[ev.learner] += 1
                # Each wave learned, then sampled by the gateway: one history point per learner per wave.
                await wait_for(lambda: _reached(store, total), timeout=120, what=f"{total} learned")
                await wait_for(lambda: _sampled(store, settings, total), timeout=30, what="the gateway's sample")
    kept = await history_lengths(store, settings)
    assert min(kept.values()) >= WAVES, kept

    with gateway(settings) as restarted:  # a new gateway process; the browser starts with nothing
        async with Chromium(str(CHROMIUM), tmp_path / "profile", width=WIDTH, height=HEIGHT) as page:
            await page.goto(f"{restarted.url}/status?key={READER}&refresh=2")
            await page.wait_for("document.querySelectorAll('[data-learner] svg.chart').length === 2 && "
                                "document.querySelector('#lag-table') !== null", what="the learners and the lag")
            facts: dict[str, Any] = await page.evaluate(PAGE_FACTS)
            shot = await page.screenshot(tmp_path / "status.png")
            # Kafka proper fills the member columns (Tansu leaves them empty): long ids must wrap, not widen.
            await page.evaluate(f"renderLag({{ok: true, status: 200, body: {{rows: {json.dumps(KAFKA_ROWS)}}}}})")
            wide: dict[str, Any] = await page.evaluate(PAGE_FACTS)
            await page.screenshot(tmp_path / "status-kafka-lag.png")
    if keep := os.environ.get("LEARNLOOP_TEST_SCREENSHOT"):
        shutil.copy(tmp_path / "status.png", keep)
        shutil.copy(tmp_path / "status-kafka-lag.png", Path(keep).with_suffix(".kafka-lag.png"))

    # The first render already draws lines from the gateway's history: one point per wave and more.
    for name in ("sea", "price"):
        assert facts["charts"][name]["points"] >= WAVES, (name, facts["charts"][name])
    assert re.search(r"^[\d,]+ points · ", facts["charts"]["sea"]["span"]), facts["charts"]["sea"]["span"]
    # Positions are events, times are times.
    sea = facts["charts"]["sea"]
    assert re.search(r"last drift at event [\d,]+ · ", sea["stats"]), sea["stats"]
    assert re.search(r"saved .*\((just now|\d+ s ago|\d+ min \d+ s ago)\)", sea["stats"]), sea["stats"]
    assert re.search(r"serving (v\S+|none yet)", sea["stats"]), sea["stats"]  # declared in the learners file
    assert sea["drifts"] >= 1 and sea["times"], sea
    assert not re.search(r"at \d", sea["stats"].replace("at event", "")), sea["stats"]
    # No sideways scroll at 1,400 px, for the page and for every section.
    assert facts["scroll"][0] <= facts["scroll"][1] == WIDTH, facts["scroll"]
    for section, scroll_width, client_width in facts["sections"]:
        assert scroll_width <= client_width, (section, scroll_width, client_width)
    assert wide["lagRows"][0][6] == KAFKA_ROWS[0]["consumer_id"]
    assert wide["scroll"][0] <= wide["scroll"][1] and all(sw <= cw for _, sw, cw in wide["sections"]), wide
    # The lag table speaks `learnloop lag`: its column names, with the real worker's partitions in it.
    assert facts["lagHead"] == list(PARTITION_COLUMNS)
    feedback = [r for r in facts["lagRows"] if r[1] == Topics(settings.kafka.topic_prefix).feedback]
    assert feedback and all(r[0] == settings.feedback.group_id for r in feedback), facts["lagRows"]
    assert (facts["state"], facts["keyform"], facts["models"]) == ("live", True, 2)

    # The screenshot has real lines: the line colour spans most of each chart's width.
    width, height, rows = png_rgb(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    for name in ("sea", "price"):
        box = facts["charts"][name]["box"]
        assert box["bottom"] <= HEIGHT, (name, box)
        spanned = accent_columns(rows, box)
        assert spanned >= 0.6 * (box["right"] - box["left"]), (name, spanned, box)


async def _reached(store: RedisStore, total: dict[str, int]) -> bool:
    return await learned(store) == total


async def _sampled(store: RedisStore, settings: Settings, total: dict[str, int]) -> bool:
    for name, n in total.items():
        last = await store.r.lindex(f"{settings.redis.key_prefix}history:{name}", -1)
        if last is None or f'"n": {n},'.encode() not in last:
            return False
    return True
