"""`learnloop produce FILE.jsonl`: validate every line, then send them with the SDK.

Every line is a complete record (``schema``, ``event_id``, ``occurred_at`` included, as on
the wire), so sending a file twice sends the same events and consumers drop the repeats.
Any invalid line makes the exit code 1, with one stderr line per invalid line saying why;
by default nothing is sent then, with ``--skip-invalid`` the valid lines still are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from schemas import Envelope, parse_event
from schemas.errors import InvalidEvent
from streams.admin import ensure_topics
from streams.producer import EventProducer
from workers.cli.common import run_async, settings


def produce(
    file: Path = typer.Argument(..., help="JSON Lines, one event per line ('-' for stdin)."),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Send the valid lines even if some are not (the exit code is still 1)."
    ),
) -> None:
    """Validate and publish events; each goes to its topic with the contract's key.

    Exits 1 if any line is invalid (each one is reported); nothing is sent then, unless --skip-invalid.
    """
    if str(file) != "-" and not file.is_file():
        raise typer.BadParameter(f"no such file: {file}", param_hint="FILE")
    lines = sys.stdin.read().splitlines() if str(file) == "-" else file.read_text().splitlines()
    events: list[Envelope] = []
    bad: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(parse_event(line))
        except InvalidEvent as exc:
            bad.append(f"line {n}: {exc}")
    for b in bad[:20]:
        typer.echo(b, err=True)
    if len(bad) > 20:
        typer.echo(f"... and {len(bad) - 20} more invalid lines", err=True)
    if bad and not skip_invalid:
        typer.echo(f"{len(bad)} invalid line(s); nothing sent (use --skip-invalid to send the rest)", err=True)
        raise typer.Exit(1)
    s = settings()

    async def send() -> None:
        async with EventProducer(s.kafka) as p:
            await ensure_topics(s.kafka, p.topics.all())
            await p.send_many(events)

    run_async(send(), settings=s)
    typer.echo(f"sent {len(events)} event(s)" + (f", skipped {len(bad)} invalid" if bad else ""))
    if bad:
        raise typer.Exit(1)  # a script must notice the lines that were not sent
