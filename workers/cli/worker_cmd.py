"""`learnloop worker ...`: long-running processes."""

from __future__ import annotations

import typer

from workers.cli.common import settings

app = typer.Typer(help="Run a worker against the configured broker and Redis.", no_args_is_help=True)


@app.command("feedback")
def feedback() -> None:
    """Learn from learnloop.feedback (joined with learnloop.predictions); emit drift and retrain events."""
    from workers.cli import setup_logging
    from workers.feedback.worker import run_feedback_worker

    s = settings()
    learners = s.load_learners()  # a bad or missing file fails here, in one line
    setup_logging(s.log_level)
    run_feedback_worker(s, learners=learners)


@app.command("conversations")
def conversations() -> None:
    """Extract entities and relations from learnloop.conversations into the knowledge graph."""
    from workers.cli import setup_logging
    from workers.conversations.worker import run_conversation_worker

    s = settings()
    setup_logging(s.log_level)
    run_conversation_worker(s)


@app.command("trainer")
def trainer() -> None:
    """Run retraining jobs from learnloop.retrain; announce new versions on learnloop.model-updates."""
    from workers.cli import setup_logging
    from workers.trainer.worker import run_trainer_worker

    s = settings()
    learners = s.load_learners()  # which learners train which model: a bad file fails here
    setup_logging(s.log_level)
    run_trainer_worker(s, learners=learners)


@app.command("api")
def api() -> None:
    """Serve the HTTP gateway: events in (to Kafka), predictions, learner/model/lag status out, the status page."""
    from learners.config import load_learners_file
    from workers.api.server import run_api
    from workers.cli import setup_logging

    s = settings()
    load_learners_file(s.learners_file)  # the learners it serves: a bad file fails here, in one line
    setup_logging(s.log_level)
    run_api(s)


@app.command("lag-exporter")
def lag_exporter() -> None:
    """Export consumer lag, time lag, Burrow statuses and model freshness as Prometheus metrics."""
    from workers.cli import setup_logging
    from workers.lag.cli import run_lag_exporter

    s = settings()
    setup_logging(s.log_level)
    run_lag_exporter(s)


@app.command("rollouts")
def rollouts() -> None:
    """Roll gated challengers out on live traffic; promote or roll back on a sequential test of their labels."""
    from workers.cli import setup_logging
    from workers.rollouts.worker import run_rollout_worker

    s = settings()
    learners = s.load_learners()  # [rollouts.MODEL] sections: a bad file fails here
    setup_logging(s.log_level)
    run_rollout_worker(s, learners=learners)
