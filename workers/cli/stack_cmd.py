"""`learnloop dev` and `learnloop demo`: the embedded stack on loopback, in one command.

Both stop on SIGINT (Ctrl-C), SIGTERM and SIGHUP alike, also when started from a script that left
SIGINT ignored: the workers first, then Redis and the broker, then ``dev.env`` goes.
The terminal shows only our own lines (and the demo's live view); the processes of the stack write
to ``.learnloop/logs``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import typer

from workers.cli.common import run_async, settings
from workers.stack.processes import StopSignals


def say(message: str, *, err: bool = False) -> None:
    """Print, unless the terminal is gone (SIGHUP after its window closed): stopping matters more."""
    try:
        typer.echo(message, err=err)
    except OSError:
        _detach_from_terminal()


def _detach_from_terminal() -> None:
    # Later writes, and the interpreter's flush at exit, would fail on a hung-up terminal too.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
    sys.stdout, sys.stderr = devnull, devnull


def log_to_file(path: Path) -> None:
    """This process's own log records (aiokafka's, Alembic's, ...) go to ``path``, not to the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def dev() -> None:
    """Start a broker (Tansu), Redis and the workers on loopback; Ctrl-C (or SIGTERM, SIGHUP) stops everything."""
    from workers.stack.stack import EmbeddedStack

    s = settings()
    stack = EmbeddedStack(s)
    log_to_file(stack.log_dir / "dev.log")
    with StopSignals() as stop, stack:
        say(f"broker     {stack.bootstrap_servers}")
        say(f"redis      {stack.redis_url}")
        say(f"workers    {', '.join(stack.workers)} (logs in {stack.log_dir})")
        for name, url in stack.metrics_urls().items():
            say(f"metrics    {name:<14} {url}")
        say(f"other learnloop commands in this folder use it (settings in {stack.env_file});")
        say("elsewhere: " + " ".join(f"{k}={v}" for k, v in stack.env().items() if "TIMEOUT" not in k))
        say("Ctrl-C to stop")
        while not stop.requested and not (failed := stack.failed_workers()):
            time.sleep(0.2)
        if not stop.requested:
            for name, code in failed.items():
                say(f"worker {name} exited with code {code}; its last lines ({stack.worker_log(name)}):", err=True)
                for line in stack.log_tail(name):
                    say(f"  {line}", err=True)
            say("stopping the stack", err=True)
            raise typer.Exit(1)
        say(f"\n{stop.name}: stopping workers, Redis and the broker ...")
    say("stopped")


def demo(
    events: int = typer.Option(40_000, min=1_000, help="SEA samples to replay (each goes to two learners)."),
    switch_at: int = typer.Option(0, help="Sample at which the concept switches (default: half way)."),
    rate: float = typer.Option(4_000, min=0, help="Events per second to produce (0 = as fast as possible)."),
    live: bool = typer.Option(True, "--live/--no-live", help="Live terminal view."),
) -> None:
    """Run the embedded stack and replay a drifting stream through it while showing what it learns."""
    from workers.settings import load_settings
    from workers.stack.demo import demo_learners_file, run_demo
    from workers.stack.stack import EmbeddedStack

    if switch_at and switch_at >= events:
        raise typer.BadParameter(f"must be below --events ({events})", param_hint="--switch-at")
    s = settings()
    learners_file = demo_learners_file()
    demo_learners = learners_file.read_bytes()
    if s.learners_file.is_file() and s.learners_file.read_bytes() == demo_learners:
        learners_file = s.learners_file  # written by an earlier demo
    elif not s.learners_file.exists() and s.learners_file.parent.is_dir():
        # The file `learnloop dev`, the trainer and `learnloop retrain` read next in this folder: with it,
        # the samples the demo stores retrain the demo's model (`learnloop retrain sea-text`) as they are.
        s.learners_file.write_bytes(demo_learners)
        learners_file = s.learners_file
        say(f"wrote {s.learners_file}: the demo's learners (edit it to declare your own)")
    stack = EmbeddedStack(s, workers=("feedback", "conversations"), learners_file=learners_file)
    log_to_file(stack.log_dir / "demo.log")
    with StopSignals() as stop, stack:
        say(f"embedded stack up: broker {stack.bootstrap_servers}, redis {stack.redis_url} (logs in {stack.log_dir})")
        demo_settings = load_settings(
            kafka=s.kafka.model_copy(update={"bootstrap_servers": stack.bootstrap_servers}),
            redis=s.redis.model_copy(update={"url": stack.redis_url}),
        )
        view = run_async(
            run_demo(demo_settings, events=events, switch_at=switch_at or events // 2, rate=rate, live=live,
                     should_stop=lambda: stop.requested),
            settings=demo_settings,
        )
        if stop.requested:
            say(f"\n{stop.name}: stopping workers, Redis and the broker ...")
        elif failed := stack.failed_workers():
            say(f"worker exited early: {failed} (see {stack.log_dir})", err=True)
            raise typer.Exit(1)
    if stop.received is not None:
        say(f"demo stopped before the end ({view.learned:,} events learned); stack stopped")
        raise typer.Exit(128 + int(stop.received))
    say(
        f"done: {view.learned:,} events learned ({view.unreported:,} predictions never reported by the app), "
        f"{len(view.drifts)} drift alarm(s), {view.deadlettered} dead-lettered; stack stopped"
    )
    if learners_file != s.learners_file:
        say(f"to retrain sea-text on the demo's samples, run the trainer with "
            f"LEARNLOOP_LEARNERS_FILE={learners_file} (your {s.learners_file} was left as it is)")
