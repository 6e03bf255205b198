"""`learnloop schemas ...`: the wire contract for apps in any language."""

from __future__ import annotations

from pathlib import Path

import typer

from schemas import export_json_schemas

app = typer.Typer(help="Event schemas (JSON Schema export).", no_args_is_help=True)


@app.command("export")
def export(directory: Path = typer.Argument(..., help="Folder to write one JSON Schema file per event into.")) -> None:
    """Write one JSON Schema (draft 2020-12) per event type into DIRECTORY."""
    if directory.exists() and not directory.is_dir():
        raise typer.BadParameter(f"{directory} exists and is not a directory", param_hint="DIRECTORY")
    for path in export_json_schemas(directory):
        typer.echo(str(path))
