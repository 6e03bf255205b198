"""`learnloop learners`: what the feedback workers have learned; `learnloop partition`: where a learner lives;
`learnloop status`: the whole stack at a glance."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import typer
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from schemas.envelope import NAME_PATTERN
from streams.config import KafkaConfig
from streams.partitioning import owner_partition
from streams.topics import Topics
from workers.cli.common import run_async, settings
from workers.feedback.redis_store import RedisStore


async def _fetch(store: RedisStore) -> list[dict[str, Any]]:
    try:
        return await store.learner_statuses()
    finally:
        await store.close()


def learners(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Each learner's events learned, prequential metrics and drift alarms."""
    s = settings()
    s.load_learners()  # refuse the file the workers would refuse, with the same line
    rows = run_async(_fetch(RedisStore.from_config(s.redis)), settings=s)
    out = [
        {
            "name": r["name"],
            "task": r.get("task"),
            "model": r.get("model"),
            "n_learned": r.get("n_learned", 0),
            "metrics": r.get("metrics", {}),
            "drifts": r.get("drifts", 0),
            "last_drift_n": (r.get("last_drift") or {}).get("n_seen"),
            "last_drift_at": r.get("last_drift_at"),
            "last_drift": r.get("last_drift"),
            "last_event_at": r.get("last_event_at"),
            "learned_at": r.get("learned_at"),
            "snapshot_at": r.get("snapshot_at"),
            "partition": r.get("partition"),
            "owner_partition": r.get("owner_partition"),
            "split": r.get("split", False),
            # What the retrain policy asked for and held back (by why), and the label-free monitors' figures.
            "retrain_gate": r.get("retrain_gate"),
            "monitors": r.get("monitors"),
        }
        for r in rows
    ]
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    if not out:
        typer.echo("no learner state yet (is `learnloop worker feedback` running against this Redis?)")
        return
    table = Table(
        "learner", "partition", "model", "learned", "accuracy / mae", "rolling", "drifts", "last drift at event"
    )
    for r in out:
        m = r["metrics"]
        main = m.get("accuracy", m.get("mae"))
        rolling = m.get("rolling_accuracy", m.get("rolling_mae"))
        table.add_row(
            r["name"], _where(r), str(r["model"]), f"{r['n_learned']:,}",
            f"{main:.4f}" if main is not None else "-", f"{rolling:.4f}" if rolling is not None else "-",
            str(r["drifts"]), f"{r['last_drift_n']:,}" if r["last_drift_n"] is not None else "-",
        )
    Console().print(table)
    split = sorted({r["name"] for r in out if r["split"]})
    if split:
        typer.echo(
            f"{', '.join(split)}: held by more than one partition (the partition count changed?); each row is a "
            "separate model, new events go to the owner partition"
        )


def _where(row: dict[str, Any]) -> str:
    where = str(row["partition"])
    if row["split"]:
        owner = row["owner_partition"]
        where += " (owner)" if owner == row["partition"] else f" (split; owner {owner if owner is not None else '?'})"
    return where


def partition(
    names: list[str] = typer.Argument(..., help="Learner names."),
    partitions: int = typer.Option(
        None, "--partitions", min=1, help="Partition count of the feedback topic (default: ask the broker)."
    ),
) -> None:
    """The feedback partition that owns each learner (Java's default partitioner on its name)."""
    bad = [n for n in names if not re.fullmatch(NAME_PATTERN, n)]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r} is not a learner name (letters, digits, _ . : -)", param_hint="NAME")
    s = settings()
    topic = Topics(s.kafka.topic_prefix).feedback
    note = ""
    if partitions is None:
        partitions = run_async(_partition_count(s.kafka, topic), settings=s)
        if partitions is None:
            partitions, note = s.kafka.partitions, f" ({topic} does not exist yet: the configured count)"
    typer.echo(f"{topic}: {partitions} partitions{note}")
    for name in names:
        typer.echo(f"{name}\t{owner_partition(name, partitions)}")


async def _partition_count(kafka: KafkaConfig, topic: str) -> int | None:
    admin = AIOKafkaAdminClient(client_id=f"{kafka.client_id}-cli", **kafka.client_kwargs())
    await admin.start()
    try:
        [found] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return len(found["partitions"]) if found.get("error_code", 0) == 0 and found["partitions"] else None


def status(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """The whole stack on one screen: broker, Redis, SQL store, graph, device, models, workers.

    Exits 1 when a required part (broker, Redis, the SQL store at its migration head) is missing;
    every problem comes with a one-line fix.
    """
    from workers.cli.system_status import collect

    # The broker check reports an unreachable broker itself; aiokafka's own warning would repeat it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    checks = asyncio.run(collect(settings()))
    failed = any(c.state == "fail" for c in checks)
    if as_json:
        typer.echo(json.dumps({"ok": not failed, "checks": [c.as_json() for c in checks]}, indent=2, default=str))
    else:
        marks = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}
        table = Table("check", "state", "", show_edge=False)
        for c in checks:
            table.add_row(c.name + (" *" if c.required else ""), marks[c.state], c.summary)
        console = Console()
        console.print(table)
        for c in checks:
            if c.fix and c.state != "ok":
                console.print(f"{c.name}: {c.fix}", markup=False, highlight=False)
        console.print("* required" + ("; a required part is missing" if failed else ""), markup=False,
                      highlight=False)
    if failed:
        raise typer.Exit(1)
