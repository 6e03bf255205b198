"""The conversation agent end to end: real broker, real spaCy pipeline, embedded graph (LadybugDB)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from learners.knowledge.config import NlpConfig
from learners.knowledge.extraction import KnowledgeExtractor
from schemas import ConversationEvent, DeadLetter, KnowledgeUpdate, parse_event
from streams.admin import ensure_topics
from streams.conversations import ConversationConsumer, ConversationProcessor
from streams.metrics import ConversationMetrics
from streams.producer import EventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.util import (
    cli_json,
    free_port,
    learnloop_families,
    read_topic,
    start_worker,
    stop_worker,
    wait_for,
)
from tests.unit.test_metrics import FAMILIES
from workers.graph.ladybug_store import DB_FILE, LadybugGraph
from workers.settings import Settings

pytestmark = pytest.mark.integration

TURNS = [
    "Bob Smith, the CTO of Acme Corp, met Alice Jones in Berlin.",
    "Alice Jones works for Globex in Paris.",
    "Acme Corp acquired Initech last year.",
]


@pytest.fixture(scope="module")
def extractor() -> KnowledgeExtractor:
    return KnowledgeExtractor(NlpConfig())


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[LadybugGraph]:
    g = LadybugGraph(tmp_path / "graph", min_support=2, retries=2, backoff_s=0.05)
    yield g
    g.close()


class Agent:
    def __init__(self, consumer: ConversationConsumer, task: asyncio.Task[None]) -> None:
        self.consumer, self.task = consumer, task

    async def stop(self) -> None:
        self.consumer.request_stop()
        await self.task
        await self.consumer.stop()


@pytest.fixture
async def agent(settings: Settings, extractor: KnowledgeExtractor, graph: LadybugGraph) -> AsyncIterator[Agent]:
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    consumer = ConversationConsumer(
        kafka=settings.kafka,
        group_id=f"{settings.feedback.group_id}-conv",
        processor=ConversationProcessor(extractor=extractor, graph=graph, source="test"),
        batch_timeout_ms=50,
    )
    await consumer.start()
    a = Agent(consumer, asyncio.create_task(consumer.run()))
    yield a
    await a.stop()


def conversation(cid: str) -> list[ConversationEvent]:
    return [ConversationEvent(conversation_id=cid, turn=i, role="user", text=t, source="test")
            for i, t in enumerate(TURNS)]


async def test_turns_become_graph_facts_and_knowledge_updates(
    settings: Settings, agent: Agent, graph: LadybugGraph
) -> None:
    events = conversation("c1") + conversation("c2")
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events)
        await p.send_raw(Topics(settings.kafka.topic_prefix).conversations, b'{"schema": "conversation/1"}', b"c9")

    async def written() -> bool:
        return agent.consumer.stats.written == len(events)

    await wait_for(written, timeout=60, what="all turns in the graph")
    stats = graph.stats()
    assert stats["conversations"] == 2 and stats["events"] == len(events)
    bob = graph.entity("Bob Smith")
    assert bob is not None and bob["mentions"] == 2
    role = [n for n in bob["neighbours"] if n["predicate"] == "role_at"]
    assert role and role[0]["support"] == 2 and role[0]["validated"]  # two conversations say it

    topics = Topics(settings.kafka.topic_prefix)
    updates = [parse_event(r.value, KnowledgeUpdate)
               for r in await read_topic(settings.kafka, topics.knowledge, expect=len(events))]
    assert sorted(str(u.source_event_id) for u in updates) == sorted(str(e.event_id) for e in events)  # type: ignore[attr-defined]
    assert any(r.predicate == "role_at" and r.validated for u in updates for r in u.relations)  # type: ignore[attr-defined]
    dead = await read_topic(settings.kafka, topics.deadletter, expect=1)
    assert [parse_event(r.value, DeadLetter).reason for r in dead] == ["validation"]  # type: ignore[attr-defined]


async def test_redelivered_events_change_no_count(settings: Settings, agent: Agent, graph: LadybugGraph) -> None:
    events = conversation("c1")
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events)

    async def first() -> bool:
        return agent.consumer.stats.written == len(events)

    await wait_for(first, timeout=60, what="first delivery written")
    before = graph.stats(), graph.entity("Bob Smith")
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events)  # the same event ids, again

    async def seen_again() -> bool:
        return agent.consumer.stats.redelivered == len(events)

    await wait_for(seen_again, timeout=30, what="redelivery noticed")
    assert (graph.stats(), graph.entity("Bob Smith")) == before


HOLD_LOCK = "import ladybug, sys; db = ladybug.Database(sys.argv[1]); print('held', flush=True); sys.stdin.read()"


async def test_graph_outage_pauses_the_agent_and_loses_nothing(
    settings: Settings, agent: Agent, graph: LadybugGraph, tmp_path: Path
) -> None:
    assert graph.stats()["events"] == 0  # opened (and created) by the agent's writer
    graph.close()  # release the store, and let another process lock it: the graph is "down"
    db_file = tmp_path / "graph" / DB_FILE
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db_file)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        events = conversation("c1") + conversation("c2")
        async with EventProducer(settings.kafka) as p:
            await p.send_many(events)

        async def paused() -> bool:
            return agent.consumer.stats.pauses >= 2

        await wait_for(paused, timeout=60, what="the agent to pause on the locked graph")
        assert agent.consumer.stats.written == 0
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()

    async def recovered() -> bool:
        return agent.consumer.stats.written == len(events)

    await wait_for(recovered, timeout=90, what="every turn written after the outage")
    assert graph.stats()["events"] == len(events)
    bob = graph.entity("Bob Smith")
    assert bob is not None and bob["mentions"] == 2


async def test_the_worker_process_end_to_end(settings: Settings, tmp_path: Path) -> None:
    # `learnloop worker conversations` as users run it: the graph from the settings (DATA_DIR/graph),
    # KnowledgeUpdates out, a read-only CLI next to the running worker, a clean exit on SIGTERM.
    events = conversation("c1") + conversation("c2")
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    async with EventProducer(settings.kafka) as p:
        await p.send_many(events)
    port = free_port()
    env = {**worker_env(settings), "LEARNLOOP_METRICS__PORT": str(port),
           "LEARNLOOP_CONVERSATIONS__GROUP_ID": f"{settings.feedback.group_id}-conv-worker"}
    worker = start_worker(env, tmp_path / "worker.log", kind="conversations")
    try:
        updates = await read_topic(settings.kafka, Topics(settings.kafka.topic_prefix).knowledge,
                                   expect=len(events), timeout=90)
        assert sorted(str(parse_event(r.value, KnowledgeUpdate).source_event_id)  # type: ignore[attr-defined]
                      for r in updates) == sorted(str(e.event_id) for e in events)
        stats = cli_json(env, "graph", "stats", "--json")  # read-only, while the worker holds the graph
        assert (stats["events"], stats["conversations"]) == (len(events), 2)
        assert stats["validated_relations"] >= 1 and stats["by_label"]["PERSON"] >= 2
        # The conversation worker's own families, no zero series of the feedback worker's or the trainer's.
        assert await asyncio.to_thread(learnloop_families, port) == FAMILIES[ConversationMetrics]
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert (settings.data_dir / "graph" / DB_FILE).exists()
