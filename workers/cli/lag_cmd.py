"""`learnloop lag`: consumer lag, time lag, Burrow status and model freshness in one view."""

from __future__ import annotations

import typer

from workers.cli.common import settings


def lag(
    group: str | None = typer.Option(None, "--group", "-g", help="Only this consumer group."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Lag per group, topic and partition, with time lag, Burrow status and model freshness."""
    from workers.lag.cli import lag_command

    code = lag_command(settings(), group, as_json)
    if code:
        raise typer.Exit(code)
