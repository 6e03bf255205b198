"""`learnloop worker conversations`: conversation events → spaCy extraction → knowledge graph."""

from __future__ import annotations

import logging

from learners.knowledge.extraction import KnowledgeExtractor
from streams.admin import ensure_topics
from streams.app import LoopService, create_app
from streams.conversations import ConversationConsumer, ConversationProcessor
from streams.metrics import serve_metrics
from streams.topics import Topics
from workers.feedback.worker import run_faust
from workers.graph.factory import open_graph
from workers.settings import Settings

log = logging.getLogger(__name__)


def build_conversation_consumer(settings: Settings) -> tuple[ConversationConsumer, object]:
    extractor = KnowledgeExtractor(settings.nlp)  # loads the spaCy pipeline: a bad model name fails here
    graph = open_graph(settings)
    processor = ConversationProcessor(extractor=extractor, graph=graph, source=settings.source)
    c = settings.conversations
    consumer = ConversationConsumer(
        kafka=settings.kafka,
        group_id=c.group_id,
        processor=processor,
        batch_max_records=c.batch_max_records,
        batch_timeout_ms=c.batch_timeout_ms,
    )
    return consumer, graph


def run_conversation_worker(settings: Settings) -> None:
    consumer, graph = build_conversation_consumer(settings)
    app = create_app(settings.kafka, app_id="learnloop-conversation-worker", data_dir=settings.data_dir / "faust")

    class Prepare(LoopService):
        async def on_first_start(self) -> None:
            await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())

        async def on_shutdown(self) -> None:
            graph.close()  # type: ignore[attr-defined]

    serve_metrics(settings.metrics.host, settings.metrics.port_for("conversations"))
    run_faust(app, Prepare(consumer), loglevel=settings.log_level)
