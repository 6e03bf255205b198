"""A loop hosted in a Faust worker (feedback, conversations, trainer) that fails stops its process non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.app import EXIT_LOOP_FAILED
from tests.integration.util import ROOT
from workers.stack.embedded import EmbeddedBroker

pytestmark = pytest.mark.integration

WORKER = """
import logging, sys
from pathlib import Path
from schemas.errors import StoreUnavailable
from streams.app import LoopService, create_app
from streams.config import KafkaConfig
from workers.feedback.worker import run_faust

class Failing:
    async def start(self): pass
    async def run(self): raise {error}
    def request_stop(self): pass
    async def stop(self): print("the loop's stop ran", flush=True)

logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
app = create_app(KafkaConfig(bootstrap_servers=sys.argv[1], topic_prefix=sys.argv[2]), app_id=sys.argv[2],
                 data_dir=Path(sys.argv[3]))
run_faust(app, LoopService(Failing()))
"""


@pytest.mark.parametrize(("error", "traceback"), [
    ('StoreUnavailable("the graph has been unreachable for 300s")', False),  # ours: one line
    ('RuntimeError("a bug")', True),  # not ours: the traceback says where
])
def test_a_failing_loop_stops_the_worker_with_exit_code_3(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, error: str, traceback: bool
) -> None:
    res = subprocess.run(
        [sys.executable, "-c", WORKER.format(error=error), broker.bootstrap_servers, f"t{unique}.", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    out = res.stdout + res.stderr
    assert res.returncode == EXIT_LOOP_FAILED, out[-3000:]
    [line] = [ln for ln in out.splitlines() if "worker stopping" in ln]
    assert error.split("(")[1].strip('")') in line
    assert "the loop's stop ran" in out  # stopped in order, as on SIGTERM
    assert ("Traceback" in out) is traceback, out[-3000:]
