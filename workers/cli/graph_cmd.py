"""`learnloop graph ...` and `learnloop dataset extract`: read the knowledge graph."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from schemas.envelope import rfc3339
from workers.cli.common import settings

app = typer.Typer(help="Query the knowledge graph (read-only).", no_args_is_help=True)
dataset_app = typer.Typer(help="Training data from the knowledge graph.", no_args_is_help=True)


def _graph() -> Any:
    from workers.graph.factory import open_graph

    return open_graph(settings(), read_only=True)


def _dump(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=_json_value))


def _json_value(value: object) -> object:
    # Times as in every JSON output: RFC 3339 in UTC (the embedded graph returns them without a zone;
    # Neo4j's driver has its own DateTime type, which converts to a datetime).
    native = value.to_native() if hasattr(value, "to_native") else value
    return rfc3339(native) if isinstance(native, datetime) else str(value)


@app.command("stats")
def stats(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Entities, relations, validated relations and conversations, with entities by label."""
    g = _graph()
    try:
        st = g.stats()
    finally:
        g.close()
    if as_json:
        _dump(st)
        return
    for k in ("entities", "relations", "validated_relations", "conversations", "events"):
        typer.echo(f"{k.replace('_', ' '):<20} {st.get(k, 0):>10,}")
    for label, n in sorted(st.get("by_label", {}).items(), key=lambda kv: -kv[1]):
        typer.echo(f"  {label:<18} {n:>10,}")


@app.command("entity")
def entity(
    name: str = typer.Argument(..., help="Entity name (any case) or key such as 'ORG:acme'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One entity and its neighbours."""
    g = _graph()
    try:
        found = g.entity(name)
    finally:
        g.close()
    if found is None:
        typer.echo(f"no entity named {name!r}", err=True)
        raise typer.Exit(1)
    if as_json:
        _dump(found)
        return
    typer.echo(f"{found['name']} ({found['label']}), key {found['key']}, {found['mentions']} mention(s)")
    table = Table("direction", "predicate", "entity", "confidence", "support", "validated")
    for n in found.get("neighbours", []):
        table.add_row(
            n.get("direction", ""), n.get("predicate", ""), n.get("name", n.get("key", "")),
            f"{n.get('confidence', 0):.2f}", str(n.get("support", "")), "yes" if n.get("validated") else "no",
        )
    Console().print(table)


@app.command("query")
def query(
    cypher: str = typer.Argument(..., help="A read-only Cypher query; write clauses are refused."),
    limit: int = typer.Option(1000, min=1, help="Most rows to return."),
) -> None:
    """Run a read-only Cypher query and print the rows as JSON."""
    g = _graph()
    try:
        rows = g.query(cypher, limit=limit)
    finally:
        g.close()
    _dump(rows)


@dataset_app.command("extract")
def extract(
    out: Path = typer.Option(..., "--out", help="JSON Lines file to write."),
    quality_threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="Keep records at least this good."),
) -> None:
    """Instruction-style training records (instruction, input, output, quality) from validated facts."""
    from workers.graph.dataset import extract_dataset, write_jsonl

    g = _graph()
    try:
        records = extract_dataset(g, quality_threshold=quality_threshold)
    finally:
        g.close()
    n = write_jsonl(records, out)
    typer.echo(f"wrote {n} record(s) to {out}")
