"""What `learnloop demo` and `learnloop jobs` show, rendered as the terminal would get it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from schemas import ConversationEvent, FeedbackEvent, PredictionEvent, RetrainRequest
from workers.cli import app
from workers.cli.training_cmd import progress_cell
from workers.stack.demo import DemoView
from workers.store.engine import make_engine
from workers.store.jobs import JobStore
from workers.store.migrate import upgrade


def rendered(view: DemoView) -> str:
    console = Console(record=True, width=220, color_system=None)
    console.print(view.render())
    return console.export_text()


def status(name: str, n: int, last_drift_at: int | None) -> dict[str, Any]:
    return {"name": name, "model": "logistic_regression", "n_learned": n, "drifts": 1 if last_drift_at else 0,
            "metrics": {"accuracy": 0.9, "rolling_accuracy": 0.8},
            "last_drift": {"n_seen": last_drift_at} if last_drift_at else None}


def drift(learner: str, n_seen: int) -> dict[str, Any]:
    return {"learner": learner, "n_seen": n_seen, "detected_at": "2026-12-03T10:00:00+00:00",
            "before": {"mean": 0.05}, "after": {"mean": 0.3}}


def test_the_sent_total_is_split_by_kind_of_event() -> None:
    view = DemoView()
    items: list[Any] = [
        *[FeedbackEvent(learner="a", features={"x": 1.0}, label=True, source="t")] * 3,
        PredictionEvent(prediction_id="p", learner="a", features={"x": 1.0}, prediction=None, model_version="v",
                        source="t"),
        ConversationEvent(conversation_id="c", turn=0, role="user", text="hi", source="t"),
        b'{"schema": "feedback/1"}',
    ]
    for item in items:
        view.count_sent(item)
    assert (view.produced, view.produced_feedback) == (6, 4)  # the malformed one goes to the feedback topic
    text = rendered(view)
    assert "sent 6 events in" in text
    assert "3 feedback, 1 predictions (the app's, logged for the join), 1 conversation turns, 1 malformed on purpose" \
        in text


def test_the_rate_is_over_the_last_seconds_and_drops_to_zero_when_learning_stops() -> None:
    view = DemoView()
    for t in range(13):  # 1,000 events/s for 6 s, then nothing more
        view.learners = [status("a", min(t, 6) * 1000, None)]
        view.sample(now=100.0 + t)
        if t == 6:
            assert view.learned_per_s() == pytest.approx(1000)
    assert view.learned_per_s() == 0.0  # a cumulative average would still say 6000/12 = 500
    assert "learned 6,000 (0/s over the last 5s)" in rendered(view)


def test_last_drift_is_one_number_in_one_format_in_both_tables() -> None:
    view = DemoView()
    # The status comes with the snapshot, so it can still name the alarm before the newest one.
    view.learners = [status("sea-linear", 20_500, 19_128), status("sea-tree", 20_500, 20_160)]
    view.drifts = [drift("sea-linear", 20_128), drift("sea-tree", 20_160), drift("sea-linear", 19_128)]
    text = rendered(view)
    linear = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("sea-linear") and "0.9000" in line)
    assert "20,128" in linear and "19,128" not in linear
    assert "20,160" in text and "20160" not in text and "20128" not in text
    assert re.search(r"sea-linear\s*│\s*20,128", text)  # the drift alarm table says the same


def test_a_running_jobs_progress_is_a_bar_with_its_step() -> None:
    assert progress_cell({"stage": "train", "epoch": 1, "step": 120, "total_steps": 120}) \
        == "train ██████████ 100% 120/120"
    assert progress_cell({"stage": "dataset"}) == "dataset"
    assert progress_cell(None) == "starting"


def test_jobs_shows_the_progress_of_a_running_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LEARNLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    url = f"sqlite:///{tmp_path / '.learnloop' / 'learnloop.db'}"
    (tmp_path / ".learnloop").mkdir()
    upgrade(url)
    engine = make_engine(url)
    try:
        jobs = JobStore(engine)
        jobs.request(RetrainRequest(model="sea-text", reason="manual", source="t"), learners=["sea"])
        job = jobs.claim_next("w1")
        assert job is not None
        jobs.heartbeat(job.id, {"stage": "train", "epoch": 1, "step": 45, "total_steps": 60}, worker_id="w1")
    finally:
        engine.dispose()
    res = CliRunner().invoke(app, ["jobs"])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if job.id[:8] in line)
    assert "running" in row and "train ███████▌░░ 75% 45/60" in row
