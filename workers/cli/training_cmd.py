"""`learnloop retrain`, `jobs`, `models` and `db`: the training side, from the command line."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from schemas import RetrainRequest
from streams.admin import ensure_topics
from streams.config import KafkaConfig
from streams.producer import EventProducer
from workers.cli.common import run_async, settings

db_app = typer.Typer(help="The SQL store (feedback samples, training jobs).", no_args_is_help=True)


def retrain(
    model: str = typer.Argument(..., help="Model name, as in a learner's retrain_model."),
    learner: str = typer.Option(
        None, "--learner",
        help="Train on this learner's samples only (default: every learner whose retrain_model is MODEL).",
    ),
    last_n: int = typer.Option(None, "--last-n", min=1, help="Train on the newest N samples."),
) -> None:
    """Ask the trainer for a new version of MODEL (a manual RetrainRequest on learnloop.retrain)."""
    from schemas import DataWindow

    s = settings()
    learners = s.load_learners()  # a bad file fails here, in one line, before anything is sent
    req = RetrainRequest(
        model=model, reason="manual", learner=learner, window=DataWindow(last_n=last_n), source=s.source
    )

    async def send() -> str | None:
        async with EventProducer(s.kafka) as p:
            await ensure_topics(s.kafka, p.topics.all())
            await p.send(req)
        return await trainer_absent(s.kafka, s.trainer.group_id, p.topics.retrain)

    absent = run_async(send(), settings=s)
    typer.echo(f"requested {model}: request {req.request_id}")
    if learner is None and not any(spec.retrain_model == model for spec in learners.learners.values()):
        typer.echo(
            f"warning: no learner in {s.learners_file} names retrain_model {model!r}; the trainer rejects the "
            "job unless its own learners file (LEARNLOOP_LEARNERS_FILE) does",
            err=True,
        )
    if absent:
        typer.echo(f"warning: {absent}; the request waits on the topic until one starts "
                   "(`learnloop worker trainer`)", err=True)


async def trainer_absent(kafka: KafkaConfig, group: str, topic: str) -> str | None:
    """Why no trainer is consuming ``topic`` in consumer group ``group``; None when one is."""
    from aiokafka import TopicPartition

    from workers.lag.offsets import BrokerReader

    async with BrokerReader(kafka) as reader:
        info = (await reader.describe([group])).get(group)
        partitions = (await reader.topics()).get(topic, [0])
    if info is None or not info.members:
        return f"no trainer is consuming {topic} (consumer group {group} has no members)"
    if not any(info.live(TopicPartition(topic, p)) for p in partitions):
        return f"no trainer is consuming {topic} (consumer group {group} is {info.state}, no member owns it)"
    return None


def jobs(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    model: str = typer.Option(None, "--model", help="Only this model's jobs."),
    limit: int = typer.Option(50, min=1, help="Most recent jobs to list."),
) -> None:
    """Training jobs: status (queued, running, succeeded, failed, rejected) and how each ended.

    The OUTCOME column (``outcome`` in JSON) uses the metrics' and alerts' words: succeeded, failed,
    dataset_invalid or rejected.
    """
    from workers.store.engine import engine_for
    from workers.store.jobs import JobStore, job_as_dict

    s = settings()
    store = JobStore(engine_for(s.database, s.data_dir))
    rows = [job_as_dict(j) for j in store.list(limit=limit, model=model)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table("job", "model", "status", "outcome", "reason", "created")
    table.add_column("progress", no_wrap=True)  # a bar broken over lines reads as nothing
    table.add_column("version")
    table.add_column("detail")
    for r in rows:
        result: dict[str, Any] = r.get("result") or {}
        detail = r.get("error") or result.get("reason") or ""
        version = f"{result['version']} ({result.get('alias')})" if result.get("version") else "-"
        progress = progress_cell(r.get("progress")) if r["status"] == "running" else ""
        table.add_row(r["id"][:8], r["model"], r["status"], r["outcome"] or "-", r["reason"],
                      str(r["created_at"])[:19], progress, version, str(detail)[:60])
    Console().print(table)


def progress_cell(progress: dict[str, Any] | None, width: int = 10) -> str:
    """A running job's stage and, while it trains, a bar of its optimizer steps.

    >>> progress_cell({"stage": "train", "epoch": 1, "step": 30, "total_steps": 120})
    'train ██▌░░░░░░░ 25% 30/120'
    >>> progress_cell({"stage": "evaluate"})
    'evaluate'
    """
    if not progress:
        return "starting"
    stage = str(progress.get("stage") or "")
    step, total = progress.get("step"), progress.get("total_steps")
    if not isinstance(step, int) or not isinstance(total, int) or total <= 0:
        return stage
    done = min(max(step / total, 0.0), 1.0)
    halves = round(done * width * 2)
    bar = ("█" * (halves // 2) + ("▌" if halves % 2 else "")).ljust(width, "░")
    return f"{stage} {bar} {done:.0%} {step}/{total}"


def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    name: str = typer.Option(None, "--model", help="Only this model."),
) -> None:
    """Registered model versions and their aliases (champion, challenger)."""
    from workers.trainer.registry import ModelRegistry

    s = settings()
    rows = ModelRegistry(s.mlflow, s.data_dir).versions(name)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table("model", "version", "aliases", "created", "f1", "accuracy", "grade")
    for r in rows:
        m = r.get("metrics") or {}
        table.add_row(
            r["name"], str(r["version"]), ", ".join(r.get("aliases", [])) or "-", str(r.get("created_at"))[:19],
            f"{m['f1']:.3f}" if "f1" in m else "-", f"{m['accuracy']:.3f}" if "accuracy" in m else "-",
            (r.get("tags") or {}).get("grade", "-"),
        )
    Console().print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the SQL schema to the newest revision (Alembic)."""
    from workers.store.config import database_url
    from workers.store.engine import describe
    from workers.store.migrate import current_revision, upgrade

    s = settings()
    url = database_url(s.database, s.data_dir)
    upgrade(url)
    typer.echo(f"{describe(url)} at revision {current_revision(url)}")


@db_app.command("current")
def db_current() -> None:
    """The schema revision of the configured database."""
    from workers.store.config import database_url
    from workers.store.migrate import current_revision, head_revision

    s = settings()
    rev = current_revision(database_url(s.database, s.data_dir))
    typer.echo(f"{rev or 'empty'} (newest: {head_revision()})")
