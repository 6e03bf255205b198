"""The `learnloop` command: one Typer app, one sub-app per command group.

Errors we raise on purpose (``LearnloopError``) print as one line on stderr and
exit with code 2; so does a command that needs an extra that is not installed.
A traceback means a bug.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer

from schemas.errors import LearnloopError
from workers.cli import (
    graph_cmd,
    lag_cmd,
    produce_cmd,
    rollout_cmd,
    schemas_cmd,
    stack_cmd,
    status_cmd,
    training_cmd,
    worker_cmd,
)

app = typer.Typer(
    name="learnloop",
    help="Event-driven continuous learning: online learners on Kafka, drift alarms, retraining.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(schemas_cmd.app, name="schemas")
app.add_typer(worker_cmd.app, name="worker")
app.add_typer(graph_cmd.app, name="graph")
app.add_typer(graph_cmd.dataset_app, name="dataset")
app.command("dev")(stack_cmd.dev)
app.command("demo")(stack_cmd.demo)
app.command("status")(status_cmd.status)
app.command("learners")(status_cmd.learners)
app.command("partition")(status_cmd.partition)
app.command("lag")(lag_cmd.lag)
app.command("produce")(produce_cmd.produce)
app.command("retrain")(training_cmd.retrain)
app.command("jobs")(training_cmd.jobs)
app.command("models")(training_cmd.models)
app.add_typer(training_cmd.db_app, name="db")
app.add_typer(rollout_cmd.app, name="rollout")
app.command("rollouts")(rollout_cmd.rollouts)


TRAIN_EXTRA_MODULES = frozenset({"mlflow", "torch", "transformers", "peft", "optuna", "pandas"})
"""Top-level modules that only the ``train`` extra installs."""


def main() -> None:
    try:
        # Without standalone mode click returns a typer.Exit's code instead of exiting with it.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        typer.echo(
            f"error: learnloop {_command_path(sys.argv[1:])} needs the 'train' extra (no module named {exc.name!r}): "
            "pip install -e '.[train]'",
            err=True,
        )
        sys.exit(2)
    except LearnloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # click's usage errors arrive here with standalone_mode=False
        # typer >= 0.26 vendors click: its BadParameter/UsageError are typer._click exceptions,
        # not click.ClickException subclasses, so recognise either by their interface.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise


def _command_path(argv: list[str]) -> str:
    """The command and sub-commands named in ``argv`` (``"worker trainer"``), without their arguments."""
    command: Any = typer.main.get_command(app)
    path = []
    for word in argv:
        commands = getattr(command, "commands", {})
        if word not in commands:
            break
        command = commands[word]
        path.append(word)
    return " ".join(path) or "this command"


# Library loggers whose INFO lines are routine for us. aiokafka's subscription state says "Updating
# subscribed topics" on every assign(): the lag reader assigns a fresh probe consumer on every sample
# (every few seconds in the exporter, on every /v1/lag poll in the gateway).
QUIET_AT_INFO = ("aiokafka.consumer.subscription_state",)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_library_loggers(level)


def quiet_library_loggers(level: str) -> None:
    """Raise the routine library loggers to WARNING, unless ``level`` is debug (then everything shows)."""
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(logging.NOTSET if level.lower() == "debug" else logging.WARNING)
