"""`learnloop learners`: what the feedback workers have learned, read from their state in Redis."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

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
    rows = run_async(_fetch(RedisStore.from_config(s.redis)), settings=s)
    out = [
        {
            "name": r["name"],
            "task": r.get("task"),
            "model": r.get("model"),
            "n_learned": r.get("n_learned", 0),
            "metrics": r.get("metrics", {}),
            "drifts": r.get("drifts", 0),
            "last_drift_at": (r.get("last_drift") or {}).get("n_seen"),
            "last_drift": r.get("last_drift"),
            "last_event_at": r.get("last_event_at"),
            "snapshot_at": r.get("snapshot_at"),
            "partition": r.get("partition"),
        }
        for r in rows
    ]
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    if not out:
        typer.echo("no learner state yet (is `learnloop worker feedback` running against this Redis?)")
        return
    table = Table("learner", "model", "learned", "accuracy / mae", "rolling", "drifts", "last drift at")
    for r in out:
        m = r["metrics"]
        main = m.get("accuracy", m.get("mae"))
        rolling = m.get("rolling_accuracy", m.get("rolling_mae"))
        table.add_row(
            r["name"], str(r["model"]), f"{r['n_learned']:,}",
            f"{main:.4f}" if main is not None else "-", f"{rolling:.4f}" if rolling is not None else "-",
            str(r["drifts"]), str(r["last_drift_at"] or "-"),
        )
    Console().print(table)
