"""Choose the knowledge graph from settings: Neo4j when a URI is set, else the embedded LadybugDB."""

from __future__ import annotations

from workers.graph import CypherGraph
from workers.settings import Settings


def open_graph(settings: Settings, *, read_only: bool = False) -> CypherGraph:
    common = {
        "min_support": settings.nlp.min_support,
        "min_confidence": settings.nlp.min_confidence,
        "retries": settings.graph.retries,
        "backoff_s": settings.graph.backoff_s,
    }
    if settings.neo4j.uri:
        from workers.graph.neo4j_store import Neo4jGraph

        return Neo4jGraph(
            settings.neo4j.uri,
            settings.neo4j.user,
            settings.neo4j.password.get_secret_value(),
            settings.neo4j.database,
            **common,  # type: ignore[arg-type]
        )
    from workers.graph.ladybug_store import LadybugGraph

    # A read-only open is a CLI query: let it use every core.
    threads = 0 if read_only else settings.graph.threads
    return LadybugGraph(settings.graph_path, read_only=read_only, threads=threads, **common)  # type: ignore[arg-type]
