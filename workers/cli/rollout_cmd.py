"""`learnloop rollouts` and `learnloop rollout promote|abort|pause|resume NAME`."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import LearnloopError
from workers.cli.common import settings

app = typer.Typer(help="Override a model's rollout by hand (the rollout controller applies it).",
                  no_args_is_help=True)

WAIT_S = 30.0


def rollouts(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with every decision and its statistics)."),
    model: str = typer.Option(None, "--model", help="Only this model's rollouts."),
    limit: int = typer.Option(20, min=1, help="Most recent rollouts to list."),
) -> None:
    """Rollouts of challengers, newest first: state, step and share, live metric per version, the interval."""
    from workers.rollouts.store import RolloutStore
    from workers.store.engine import engine_for

    s = settings()
    rows = RolloutStore(engine_for(s.database, s.data_dir)).rollouts(model=model, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table("rollout", "model", "state", "mode", "step", "share", "champion", "challenger", "labels",
                  "difference", "reason")
    for r in rows:
        a, b, d = r["champion"], r["challenger"], r["difference"]
        table.add_row(
            r["id"][:8], r["model"], r["state"], r["mode"], f"{r['step'] + 1}/{len(r['steps'])}",
            f"{r['share']:g} %", f"v{r['champion_version']} {a['metric']['mean']:.3f}",
            f"v{r['challenger_version']} {b['metric']['mean']:.3f}", f"{a['labels']}/{b['labels']}",
            f"[{d['lower']:+.3f}, {d['upper']:+.3f}]", str(r["reason"])[:60],
        )
    Console().print(table)


def _command(name: str, action: str, wait_s: float) -> None:
    from workers.rollouts.store import RolloutStore
    from workers.store.engine import engine_for

    s = settings()
    store = RolloutStore(engine_for(s.database, s.data_dir))
    command_id = store.request(name, action)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        result = store.command_result(command_id)
        if result is not None:
            typer.echo(f"{name}: {result}")
            return
        time.sleep(0.2)
    raise LearnloopError(f"{action} {name}: queued, but no rollout controller applied it within {wait_s:g}s "
                         "(is `learnloop worker rollouts` running?)")


_WAIT = typer.Option(WAIT_S, "--wait", min=0.0, help="Seconds to wait for the controller to apply it.")
_NAME = typer.Argument(..., help="The registered model.")


@app.command("promote")
def promote(name: str = _NAME, wait: float = _WAIT) -> None:
    """Promote the challenger now: its running rollout, or a challenger that is not served."""
    _command(name, "promote", wait)


@app.command("abort")
def abort(name: str = _NAME, wait: float = _WAIT) -> None:
    """Stop the running rollout; the champion answers every request."""
    _command(name, "abort", wait)


@app.command("pause")
def pause(name: str = _NAME, wait: float = _WAIT) -> None:
    """Send every request to the champion; the step and its labels are kept."""
    _command(name, "pause", wait)


@app.command("resume")
def resume(name: str = _NAME, wait: float = _WAIT) -> None:
    """Route the paused step's share to the challenger again (its clock restarts)."""
    _command(name, "resume", wait)
