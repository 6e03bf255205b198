"""Which graph the settings open, and with which engine options."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.errors import ConfigError
from workers.graph.factory import open_graph
from workers.graph.ladybug_store import LadybugGraph
from workers.settings import load_settings


def test_the_worker_opens_ladybug_with_the_configured_threads_and_a_cli_read_with_all(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, graph={"threads": 3})
    writer, reader = open_graph(s), open_graph(s, read_only=True)
    assert isinstance(writer, LadybugGraph) and isinstance(reader, LadybugGraph)
    assert (writer.threads, writer.read_only, reader.threads, reader.read_only) == (3, False, 0, True)
    assert writer.path == reader.path == tmp_path / "graph"
    assert load_settings(data_dir=tmp_path).graph.threads == 1  # the default: leave the cores to spaCy


def test_a_negative_thread_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LEARNLOOP_GRAPH__THREADS: Input should be greater than or equal to 0"):
        load_settings(data_dir=tmp_path, graph={"threads": -1})
