"""The README's Node.js producer runs as written, and its list of internal topics is what the workers create.

The Node.js producer is kafkajs + ajv against the exported JSON Schema and the real broker.

The README shows ``examples/node/produce.mjs`` verbatim; this test installs its pinned packages with npm
(a private cache in a temporary folder), runs it, and reads what it sent as a worker does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from schemas import FeedbackEvent, export_json_schemas, parse_event
from streams.admin import ensure_topics
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.util import read_topic, start_worker, stop_worker, wait_for
from workers.settings import Settings

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
README = Path(__file__).resolve().parents[2] / "README.md"
LEARNER = "sea-tree"  # librdkafka's default partitioner puts this key elsewhere; murmur2 must not


def test_the_readme_shows_the_example_as_it_is() -> None:
    assert (EXAMPLE / "produce.mjs").read_text().strip() in README.read_text()


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="node and npm not installed")
async def test_the_node_example_sends_a_valid_event_to_the_learners_owner_partition(
    settings: Settings, tmp_path: Path
) -> None:
    work = tmp_path / "node"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("node_modules"))
    export_json_schemas(work / "schemas-json")
    topics = Topics(settings.kafka.topic_prefix)
    await ensure_topics(settings.kafka, topics.all())
    env = {**os.environ, "npm_config_cache": str(tmp_path / "npm-cache"), "npm_config_update_notifier": "false",
           "LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "LEARNLOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix}
    install = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=300)
    if install.returncode != 0 and "ENOTFOUND" in install.stderr + install.stdout:
        pytest.skip(f"the npm registry is not reachable: {install.stderr.strip()[-200:]}")
    assert install.returncode == 0, install.stderr
    run = subprocess.run(["node", "produce.mjs", LEARNER], cwd=work, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("sent ")

    [record] = await read_topic(settings.kafka, topics.feedback, expect=1)
    event = parse_event(record.value, FeedbackEvent)  # exactly as the feedback worker reads it
    assert isinstance(event, FeedbackEvent) and event.learner == LEARNER and record.key == LEARNER.encode()
    partitions = list(range(settings.kafka.partitions))
    assert record.partition == DefaultPartitioner()(LEARNER.encode(), partitions, partitions)


async def test_the_readme_names_the_internal_topics_a_worker_creates(settings: Settings, tmp_path: Path) -> None:
    """What a feedback worker's Faust layer creates besides the contract's topics is what the README lists."""
    worker = start_worker(worker_env(settings), tmp_path / "worker.log")
    try:
        async def internal() -> list[str]:
            admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
            await admin.start()
            try:
                names = await admin.list_topics()
            finally:
                await admin.close()
            # Other tests' topics carry their own prefixes; the Faust ones are named after the app id.
            return sorted(n for n in names if n.startswith("learnloop-"))

        found: list[str] = []

        async def created() -> bool:
            # The assignor topic outlives other tests' workers in the session broker: wait for this
            # worker to be up too, so that it is stopped as a running worker, not mid-import.
            found[:] = await internal()
            started = "feedback consumer started" in (tmp_path / "worker.log").read_text(errors="replace")
            return started and "learnloop-feedback-worker-__assignor-__leader" in found

        await wait_for(created, timeout=120, what="the feedback worker's Faust topics")
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert not [n for n in found if "changelog" in n]  # the workers keep no Faust tables
    readme = README.read_text()
    assert all(f"`{n}`" in readme for n in found if n.startswith("learnloop-feedback-worker")), found
