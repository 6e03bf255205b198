"""`learnloop status` against a running stack (real broker, Redis, SQL store, a feedback worker) and a stopped one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import worker_env
from tests.integration.util import ROOT, start_worker, stop_worker, wait_for
from workers.settings import Settings

pytestmark = pytest.mark.integration


def status(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([sys.executable, "-m", "workers.cli", "status", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert not res.stderr.strip(), res.stderr  # findings go in the report, not as log lines
    out = json.loads(res.stdout)
    return res.returncode, {c["name"]: c for c in out["checks"]} | {"ok": out["ok"]}


async def test_status_shows_a_running_stack(settings: Settings, store: Any, tmp_path: Path) -> None:
    env = worker_env(settings)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        async def beating() -> bool:
            return any(p["group"] == settings.feedback.group_id for p in await store.progress())

        await wait_for(beating, timeout=120, what="the feedback worker's heartbeat")
        code, checks = status(env)
    finally:
        stop_worker(worker)
    assert code == 0 and checks["ok"] is True, checks
    assert checks["broker"]["state"] == "ok"
    assert f"{settings.kafka.topic_prefix}feedback" in checks["broker"]["detail"]["topics"]
    assert checks["redis"]["state"] == "ok"
    db = checks["database"]
    assert db["state"] == "ok" and db["detail"]["revision"] == db["detail"]["head"]
    assert settings.feedback.group_id in checks["workers"]["detail"]["recent"]
    assert checks["device"]["detail"]["type"] in ("cpu", "cuda", "mps")
    assert checks["libraries"]["detail"]["torch"]
    assert checks["models"]["state"] == "warn" and checks["models"]["fix"]  # nothing registered in a fresh data dir


def test_status_of_a_stopped_stack_fails_with_a_fix_per_problem(settings: Settings) -> None:
    env = worker_env(settings) | {"LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
                                  "LEARNLOOP_REDIS__URL": "redis://127.0.0.1:9/0"}
    code, checks = status(env)
    assert code == 1 and checks["ok"] is False
    for name in ("broker", "redis", "database"):
        assert checks[name]["state"] == "fail" and checks[name]["required"], checks[name]
        assert checks[name]["fix"] and "\n" not in checks[name]["fix"]
    assert "does not exist" in checks["database"]["summary"]
    assert not (settings.data_dir / "learnloop.db").exists()  # looking did not create it
    assert checks["workers"]["state"] == "warn"
