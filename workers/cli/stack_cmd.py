"""`learnloop dev` and `learnloop demo`: the embedded stack on loopback, in one command."""

from __future__ import annotations

import time

import typer

from workers.cli.common import run_async, settings


def dev() -> None:
    """Start a broker (Tansu), Redis and the feedback worker on loopback; Ctrl-C stops everything."""
    from workers.stack.stack import EmbeddedStack

    s = settings()
    stack = EmbeddedStack(s)
    with stack:
        typer.echo(f"broker     {stack.bootstrap_servers}")
        typer.echo(f"redis      {stack.redis_url}")
        typer.echo(f"workers    {', '.join(stack.workers)} (logs in {stack.log_dir})")
        typer.echo(f"other learnloop commands in this folder use it (settings in {stack.env_file});")
        typer.echo("elsewhere: " + " ".join(f"{k}={v}" for k, v in stack.env().items() if "TIMEOUT" not in k))
        typer.echo("Ctrl-C to stop")
        try:
            while not (failed := stack.failed_workers()):
                time.sleep(0.5)
            typer.echo(f"worker exited: {failed}; stopping", err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            typer.echo("\nstopping workers, Redis and the broker ...")
    typer.echo("stopped")


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
    if not s.learners_file.exists() and s.learners_file.parent.is_dir():
        # The file `learnloop dev`, the trainer and `learnloop retrain` read next in this folder: with it,
        # the samples the demo stores retrain the demo's model (`learnloop retrain sea-text`) as they are.
        s.learners_file.write_bytes(learners_file.read_bytes())
        learners_file = s.learners_file
        typer.echo(f"wrote {s.learners_file}: the demo's learners (edit it to declare your own)")
    stack = EmbeddedStack(s, workers=("feedback", "conversations"), learners_file=learners_file, quiet_workers=True)
    with stack:
        typer.echo(f"embedded stack up: broker {stack.bootstrap_servers}, redis {stack.redis_url}")
        demo_settings = load_settings(
            kafka=s.kafka.model_copy(update={"bootstrap_servers": stack.bootstrap_servers}),
            redis=s.redis.model_copy(update={"url": stack.redis_url}),
        )
        view = run_async(
            run_demo(demo_settings, events=events, switch_at=switch_at or events // 2, rate=rate, live=live),
            settings=demo_settings,
        )
        if failed := stack.failed_workers():
            typer.echo(f"worker exited early: {failed} (see {stack.log_dir})", err=True)
            raise typer.Exit(1)
    typer.echo(
        f"done: {view.learned:,} events learned, {len(view.drifts)} drift alarm(s), "
        f"{view.deadlettered} dead-lettered; stack stopped"
    )
    if learners_file != s.learners_file:
        typer.echo(f"to retrain sea-text on the demo's samples, run the trainer with "
                   f"LEARNLOOP_LEARNERS_FILE={learners_file} (your {s.learners_file} was left as it is)")
