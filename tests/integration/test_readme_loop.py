"""The README's two-call loop, run as it is written, against a real worker process and gateway.

The block is taken from README.md (the fenced block after the ``two-call-loop`` marker) and
run in a fresh interpreter with only ``GATEWAY`` and ``API_KEY`` set, as an app would run it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import worker_env
from tests.integration.util import ROOT, start_worker, stop_worker, wait_for
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key, new_key
from workers.api.server import BackgroundServer
from workers.feedback.redis_store import RedisStore
from workers.settings import Settings

pytestmark = pytest.mark.integration

LEARNERS = '[learners.churn]\ntask = "binary"\nmodel = "logistic_regression"\n'


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- two-call-loop[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md lost its two-call-loop block"
    return found.group(1)


async def test_the_readme_two_call_loop_predicts_and_its_feedback_is_learned(
    settings: Settings, store: RedisStore, tmp_path: Path
) -> None:
    settings.learners_file.write_text(LEARNERS)
    key = new_key()
    api = ApiConfig(keys=[ApiKey(name="my-app", sha256=hash_key(key), scopes=("predict", "write"))])
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(settings), log)
    try:
        with BackgroundServer(create_app(settings, api=api)) as gateway:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
                # Some history, so that churn has a published version to answer with.
                history = [{"learner": "churn", "features": {"tenure": t, "plan": p}, "label": t < 6}
                           for t in range(12) for p in ("pro", "free")] * 10
                assert (await http.post("/v1/feedback", json=history, headers={"X-API-Key": key})).status_code == 202

                async def served() -> bool:
                    res = await http.post("/v1/predict/churn?log=false", json={"features": {"tenure": 1}},
                                          headers={"X-API-Key": key})
                    return res.status_code == 200

                await wait_for(served, timeout=120, what="a first version of churn")
            learned_before = await _n_learned(store)
            run = subprocess.run(
                [sys.executable, "-c", readme_block()], env={"GATEWAY": gateway.url, "API_KEY": key, "PATH": ""},
                capture_output=True, text=True, timeout=60, check=False,
            )
            assert run.returncode == 0, run.stderr
            label, _, rest = run.stdout.partition(" ")
            assert label in ("True", "False") and "probability" in rest

            async def joined_and_learned() -> bool:
                progress = await store.progress()
                joined = sum(int(p.get("counters", {}).get("joined", 0)) for p in progress)
                return joined >= 1 and await _n_learned(store) > learned_before

            await wait_for(joined_and_learned, timeout=120, what="the README's feedback joined and learned")
    finally:
        assert stop_worker(worker) == 0, log.read_text()[-3000:]


async def _n_learned(store: RedisStore) -> int:
    return sum(int(s["n_learned"]) for s in await store.learner_statuses() if s["name"] == "churn")
