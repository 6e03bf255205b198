"""The rollout controller as a real process: simulated traffic with delayed labels decides each rollout.

An app is simulated as the gateway and the subscriber serve: each request is assigned with
``learners.rollout.assign`` at the share the controller announced, the answering version's
prediction is logged as a PredictionEvent, and its label arrives later as a FeedbackEvent.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from learners.rollout import assign
from schemas import FeedbackEvent, ModelUpdate, PredictionEvent, RolloutEvent, parse_event
from streams.producer import EventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.test_api import READER, api_config
from tests.integration.util import ROOT, read_topic, start_worker, stop_worker, wait_for, write_learners
from workers.api.app import create_app
from workers.api.server import BackgroundServer
from workers.rollouts.store import RolloutStore
from workers.settings import Settings
from workers.store.migrate import migrated_engine

pytest.importorskip("mlflow", reason="the rollout controller moves registry aliases")

MODEL = "sea-text"
FINAL = ("promoted", "rolled_back", "aborted", "inconclusive")


def policy(steps: str = "[20, 50, 100]", extra: str = "") -> str:
    return f"""
[rollouts.{MODEL}]
mode = "canary"
steps = {steps}
min_labels = 40
max_step_duration_s = 600
alpha = 0.05
{extra}
[rollouts.{MODEL}.guardrails]
min_requests = 1000000
"""


@pytest.fixture
def registry(settings: Settings, tmp_path: Path) -> Any:
    from workers.trainer.registry import ModelRegistry

    reg = ModelRegistry(settings.mlflow, settings.data_dir)
    artifacts = tmp_path / "model"
    artifacts.mkdir()
    reg.client.create_registered_model(MODEL)
    for _ in range(3):
        reg.client.create_model_version(MODEL, source=artifacts.as_uri())
    reg.set_alias(MODEL, "champion", "1")
    return reg


@pytest.fixture
def rollout_store(settings: Settings) -> RolloutStore:
    return RolloutStore(migrated_engine(settings.database, settings.data_dir))


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return {**worker_env(settings), "LEARNLOOP_ROLLOUT__TICK_S": "0.2"}


@dataclass
class Controller:
    env: dict[str, str]
    log: Path
    store: RolloutStore
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_worker(self.env, self.log, "rollouts")

    async def ready(self, partitions: int) -> None:
        async def positions() -> bool:
            self._alive()
            return len(self.store.offsets()) >= 3 * partitions

        await wait_for(positions, what="the controller reading every partition")

    def _alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")

    def latest(self) -> dict[str, Any] | None:
        rows = self.store.rollouts(model=MODEL, limit=1)
        return rows[0] if rows else None

    async def until(self, what: str, check: Any, timeout: float = 90.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def ok() -> bool:
            self._alive()
            row = self.latest()
            if row is not None and check(row):
                found.update(row)
                return True
            return False

        await wait_for(ok, timeout=timeout, what=what)
        return found


@pytest.fixture
def controller(env: dict[str, str], rollout_store: RolloutStore, tmp_path: Path) -> Iterator[Controller]:
    c = Controller(env, tmp_path / "rollouts.log", rollout_store)
    try:
        yield c
    finally:
        if c.proc is not None:
            stop_worker(c.proc)


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[EventProducer]:
    async with EventProducer(settings.kafka) as p:
        yield p


@dataclass
class App:
    """Requests from users, answered by the version the rollout assigns, labelled a batch later."""

    producer: EventProducer
    controller: Controller
    accuracy: dict[str, float]
    latency_ms: dict[str, float] = field(default_factory=lambda: {"champion": 5.0, "challenger": 5.0})
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    sent: int = 0
    labelled: dict[str, int] = field(default_factory=dict)  # per rollout id
    served_by: dict[str, int] = field(default_factory=lambda: {"champion": 0, "challenger": 0})

    async def batch(self, n: int = 40) -> dict[str, Any]:
        """``n`` requests at the current routing, then (once the controller saw them) their labels."""
        r = self.controller.latest()
        assert r is not None
        routed = r["state"] == "running"
        pending = []
        for _ in range(n):
            self.sent += 1
            pid, subject = f"p-{self.sent}", f"user-{self.rng.randrange(10**9)}"
            shadow = routed and r["mode"] == "shadow"
            arm = assign(subject, r["share"], salt=r["id"]) if routed and not shadow else "champion"
            self.served_by[arm] += 1
            truth = self.rng.random() < 0.5
            arms = [arm, "challenger"] if shadow else [arm]  # a shadow copy is logged, never answers
            for a in arms:
                right = self.rng.random() < self.accuracy[a]
                copy = a == "challenger" and shadow
                await self.producer.send(PredictionEvent(
                    source="app", prediction_id=f"{pid}:shadow" if copy else pid, learner=MODEL, model=MODEL,
                    text=f"request {self.sent}", prediction=truth if right else not truth, probability=0.8,
                    model_version=r[f"{a}_version"], subject_id=subject, rollout_id=r["id"] if routed else None,
                    arm=a if routed else None, shadow_of=pid if copy else None, latency_ms=self.latency_ms[a]))
            pending.append((pid, truth))
        await self.producer.flush()
        if routed:  # the controller has counted them: their labels cannot overtake them
            requests = r["champion"]["requests"] + r["challenger"]["requests"]
            logged = n * (2 if r["mode"] == "shadow" else 1)
            await self.controller.until("predictions counted", lambda row: row["id"] != r["id"] or row["state"]
                                        in FINAL or row["champion"]["requests"] + row["challenger"]["requests"]
                                        >= requests + logged)
            self.labelled[r["id"]] = self.labelled.get(r["id"], 0) + n
        for pid, truth in pending:
            await self.producer.send(FeedbackEvent(source="app", learner=MODEL, prediction_id=pid, label=truth))
        await self.producer.flush()
        return r

    async def until_final(self, max_batches: int = 60) -> dict[str, Any]:
        for _ in range(max_batches):
            r = await self.batch()
            if r["state"] in FINAL:
                return r
            latest = self.controller.latest()
            assert latest is not None
            if latest["state"] in FINAL:
                return latest
        raise AssertionError(f"no decision after {max_batches} batches: {self.controller.latest()}")


async def announce(producer: EventProducer, version: str, *, rollout: bool = True) -> None:
    await producer.send(ModelUpdate(source="trainer", model=MODEL, version=version, kind="fine-tuned",
                                    uri=f"models:/{MODEL}/{version}", alias="challenger", rollout=rollout))
    await producer.flush()


async def rollout_events(settings: Settings, expect: int) -> list[RolloutEvent]:
    recs = await read_topic(settings.kafka, Topics(settings.kafka.topic_prefix).rollouts, expect=expect, timeout=30)
    events = [parse_event(r.value, RolloutEvent) for r in recs]
    return sorted(events, key=lambda e: e.decided_at)


async def start(settings: Settings, controller: Controller, producer: EventProducer, text: str) -> dict[str, Any]:
    write_learners(settings, text)
    controller.start()
    await controller.ready(settings.kafka.partitions)
    await announce(producer, "2")
    return await controller.until("a running rollout", lambda r: r["state"] == "running")


async def test_a_better_challenger_is_promoted_through_every_step(
    settings: Settings, registry: Any, controller: Controller, producer: EventProducer
) -> None:
    r = await start(settings, controller, producer, policy())
    assert (r["champion_version"], r["challenger_version"], r["share"]) == ("1", "2", 20.0)
    app = App(producer, controller, accuracy={"champion": 0.6, "challenger": 0.95})
    final = await app.until_final()
    assert final["state"] == "promoted", final
    # 20 % → 50 %, where both versions still get labels, then promotion moves the last share.
    assert [d["action"] for d in final["decisions"]] == ["start", "advance", "promote"]
    assert final["previous_champion"] == "1"
    assert registry.alias_version(MODEL, "champion") == "2"
    promote = final["decisions"][-1]["statistics"]
    assert promote["difference"]["lower"] > 0 and promote["challenger"]["labels"] > 0
    shares = [e.share for e in await rollout_events(settings, expect=3) if e.state == "running"]
    assert shares == [20.0, 50.0]
    updates = await read_topic(settings.kafka, Topics(settings.kafka.topic_prefix).model_updates, expect=2)
    champions = [parse_event(u.value, ModelUpdate) for u in updates]
    assert [(u.version, u.alias, u.lineage.parent_version) for u in champions if u.alias == "champion"] == [
        ("2", "champion", "1")]


async def test_a_shadow_is_judged_on_the_same_requests_and_promoted_when_better(
    settings: Settings, registry: Any, controller: Controller, producer: EventProducer
) -> None:
    r = await start(settings, controller, producer, policy("[100]").replace('"canary"', '"shadow"'))
    assert (r["mode"], r["share"]) == ("shadow", 100.0)
    app = App(producer, controller, accuracy={"champion": 0.6, "challenger": 0.95})
    final = await app.until_final()
    assert final["state"] == "promoted", final
    assert app.served_by == {"champion": app.sent, "challenger": 0}  # the shadow answered no one
    # One label scored both versions: the paired interval decided.
    paired = final["decisions"][-1]["statistics"]["difference"]
    assert paired["n_champion"] == paired["n_challenger"] == final["challenger"]["labels"] > 0
    assert registry.alias_version(MODEL, "champion") == "2"


async def test_a_worse_challenger_is_rolled_back_before_full_traffic(
    settings: Settings, registry: Any, controller: Controller, producer: EventProducer
) -> None:
    await start(settings, controller, producer, policy())
    # The challenger's labels are flipped: it is right where the champion is wrong.
    app = App(producer, controller, accuracy={"champion": 0.8, "challenger": 0.2})
    final = await app.until_final()
    assert final["state"] == "rolled_back", final
    assert final["step"] < 2 and "worse" in final["reason"]
    assert registry.alias_version(MODEL, "champion") == "1"
    assert app.served_by["champion"] > app.served_by["challenger"]
    last = (await rollout_events(settings, expect=2))[-1]
    assert (last.state, last.share, last.statistics["difference_upper"] < 0) == ("rolled_back", 0.0, True)


async def test_a_guardrail_breach_rolls_back(
    settings: Settings, registry: Any, controller: Controller, producer: EventProducer
) -> None:
    text = policy().replace("min_requests = 1000000", "min_requests = 20\nmax_p95_latency_ratio = 2.0")
    await start(settings, controller, producer, text)
    app = App(producer, controller, accuracy={"champion": 0.7, "challenger": 0.7},
              latency_ms={"champion": 10.0, "challenger": 80.0})
    final = await app.until_final()
    assert final["state"] == "rolled_back" and final["reason"].startswith("guardrail: p95 latency"), final
    assert registry.alias_version(MODEL, "champion") == "1"


async def test_the_controller_survives_sigkill_and_resumes_without_counting_twice(
    settings: Settings, registry: Any, controller: Controller, producer: EventProducer
) -> None:
    r = await start(settings, controller, producer, policy("[20, 50, 100]", "min_effect = 0.0"))
    app = App(producer, controller, accuracy={"champion": 0.6, "challenger": 0.95})
    while (latest := controller.latest()) is not None and latest["step"] == 0:
        await app.batch()
    assert controller.proc is not None
    os.killpg(controller.proc.pid, signal.SIGKILL)
    controller.proc.wait(30)
    # Labels sent while it is down are read after the restart.
    before = controller.latest()
    assert before is not None
    controller.start()
    await controller.ready(settings.kafka.partitions)
    resumed = await controller.until("the resumed rollout", lambda row: row["state"] == "running")
    assert (resumed["id"], resumed["step"]) == (r["id"], before["step"]) == (r["id"], 1)
    await app.batch()  # half of 40 per version: the step cannot end on it
    # Every label sent so far counts once: those replayed from before the kill are not counted twice.
    labelled = app.labelled[r["id"]]
    now = await controller.until("every label counted", lambda row: row["champion"]["labels"]
                                 + row["challenger"]["labels"] >= labelled)
    assert (now["step"], now["champion"]["labels"] + now["challenger"]["labels"]) == (1, labelled)
    final = await app.until_final()
    assert final["id"] == r["id"] and final["state"] == "promoted", final
    assert "resumed rollout" in controller.log.read_text()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=90)


async def test_people_pause_resume_abort_and_promote(
    settings: Settings, registry: Any, controller: Controller, producer: EventProducer, env: dict[str, str]
) -> None:
    first = await start(settings, controller, producer, policy())
    res = cli(env, "rollout", "pause", MODEL)
    assert res.returncode == 0 and "paused" in res.stdout, res.stderr
    paused = (await rollout_events(settings, expect=2))[-1]
    assert (paused.state, paused.share) == ("paused", 0.0)
    assert cli(env, "rollout", "pause", MODEL).stdout.strip().endswith("is already paused")
    res = cli(env, "rollout", "resume", MODEL)
    assert res.returncode == 0 and "running" in res.stdout, res.stderr
    with BackgroundServer(create_app(settings, api=api_config())) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            shown = await client.get("/v1/rollouts", headers={"X-API-Key": READER})
    assert shown.status_code == 200, shown.text
    assert [(r["id"], r["state"], r["share"]) for r in shown.json()["rollouts"]] == [(first["id"], "running", 20.0)]
    res = cli(env, "rollout", "abort", MODEL)
    assert res.returncode == 0 and "aborted" in res.stdout, res.stderr
    assert registry.alias_version(MODEL, "champion") == "1"

    await announce(producer, "3")
    second = await controller.until("a second rollout", lambda r: r["id"] != first["id"])
    res = cli(env, "rollout", "promote", MODEL)
    assert res.returncode == 0 and "promoted" in res.stdout, res.stderr
    assert registry.alias_version(MODEL, "champion") == "3"
    rows = json.loads(cli(env, "rollouts", "--json").stdout)
    assert [(r["id"], r["state"]) for r in rows] == [(second["id"], "promoted"), (first["id"], "aborted")]
    assert [d["action"] for d in rows[1]["decisions"]] == ["start", "pause", "resume", "abort"]
    assert rows[0]["decisions"][-1]["manual"] is True

    # A challenger that failed the offline gate is served by no one until a person promotes it.
    registry.set_alias(MODEL, "challenger", "2")
    await announce(producer, "2", rollout=False)
    res = cli(env, "rollout", "promote", MODEL)
    assert res.returncode == 0 and "promoted v2 to champion (was v3)" in res.stdout, res.stderr
    assert registry.alias_version(MODEL, "champion") == "2"
    assert len(controller.store.rollouts(model=MODEL)) == 2

    res = cli(env, "rollout", "abort", MODEL)
    assert res.returncode == 0 and "no running rollout" in res.stdout


def test_a_command_without_a_controller_says_so_in_one_line(env: dict[str, str], rollout_store: RolloutStore) -> None:
    t0 = time.monotonic()
    res = cli(env, "rollout", "pause", MODEL, "--wait", "0.5")
    assert res.returncode != 0 and time.monotonic() - t0 < 60
    assert res.stderr.strip().splitlines() == [
        f"error: pause {MODEL}: queued, but no rollout controller applied it within 0.5s "
        "(is `learnloop worker rollouts` running?)"]


def test_the_rollouts_table_shows_state_share_and_live_numbers(
    env: dict[str, str], rollout_store: RolloutStore
) -> None:
    from learners.rollout import RolloutPolicy, RolloutStats
    from schemas.envelope import utc_now
    from workers.rollouts.store import DecisionRecord, LiveRollout

    now = utc_now()
    stats = RolloutStats(alpha=0.05)
    for i in range(50):
        stats.champion.labelled(float(i % 2))
        stats.challenger.labelled(1.0)
    live = LiveRollout(id="r" * 32, model=MODEL, state="running", policy=RolloutPolicy(steps=[10, 50]),
                       champion_version="1", challenger_version="2", stats=stats, started_at=now,
                       step_started_at=now, step=1)
    rollout_store.save([live], [DecisionRecord(live.id, 0, "start", "started", {}, new_step=(0, 10.0))], {}, {})
    res = cli({**env, "COLUMNS": "250"}, "rollouts")  # one line per rollout
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if MODEL in line)
    for cell in ("running", "canary", "2/2", "50 %", "v1 0.500", "v2 1.000", "50/50"):
        assert cell in row, (cell, row)
