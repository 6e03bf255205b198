"""The conversation loop: learnloop.conversations → extraction → knowledge graph → learnloop.knowledge.

At-least-once with an idempotent sink: offsets are committed only after the
batch is in the graph and its ``KnowledgeUpdate`` events are acknowledged, and
the graph skips source events it already holds, so a redelivered batch changes
no count. A graph outage pauses the loop (the writer retries, then raises
``BackPressureError``); the loop waits, rewinds to the last committed offsets
and tries again — nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from learners.knowledge.model import Extraction, GraphBatch
from schemas import ConversationEvent, DeadLetter, EntityRef, Envelope, KnowledgeUpdate, RelationRef, parse_event
from schemas.errors import BackPressureError, DuplicateEvents, GraphError, InvalidEvent, StoreUnavailable
from streams.config import KafkaConfig
from streams.derived import dead_letter, derived_id
from streams.lifecycle import Lifecycle
from streams.metrics import ConversationMetrics, conversation_metrics
from streams.ports import RecordLike
from streams.producer import send_and_wait
from streams.topics import Topics

log = logging.getLogger(__name__)
_PAUSE = (BackPressureError, StoreUnavailable, KafkaError, OSError)  # the loop pauses, rewinds and retries


class Extractor(Protocol):
    def extract(self, events: Sequence[ConversationEvent]) -> list[Extraction]: ...


class KnowledgeGraph(Protocol):
    def known_events(self, event_ids: Sequence[str]) -> set[str]: ...

    def write_validated(self, batch: GraphBatch) -> tuple[list[str], set[tuple[str, str, str]]]: ...


@dataclass
class ConversationStats:
    batches: int = 0
    events: int = 0
    written: int = 0
    redelivered: int = 0
    entities: int = 0
    relations: int = 0
    deadlettered: int = 0
    pauses: int = 0
    last_batch_s: float = 0.0
    extract_s: float = 0.0
    write_s: float = 0.0
    per_event: dict[str, int] = field(default_factory=dict)


@dataclass
class Prepared:
    """One batch decoded and extracted, not yet written: dead letters so far, and the fresh extractions."""

    outputs: list[Envelope]
    extractions: list[Extraction]
    topic: str = ""  # where the records came from, for the metrics


class ConversationProcessor:
    """Decode, extract, write one batch; returns the events to publish. Plain code, no Kafka."""

    def __init__(
        self, *, extractor: Extractor, graph: KnowledgeGraph, source: str, metrics: ConversationMetrics | None = None
    ) -> None:
        self.extractor = extractor
        self.graph = graph
        self.source = source
        self.metrics = metrics or conversation_metrics()

    def dead_letter(self, rec: RecordLike, exc: BaseException) -> DeadLetter:
        return dead_letter(rec, exc, source=self.source)

    def process(self, records: Sequence[Any], stats: ConversationStats) -> list[Envelope]:
        """Blocking (spaCy and the graph client are synchronous): run it in a thread."""
        return self.finish(self.prepare(records, stats), stats)

    def prepare(self, records: Sequence[Any], stats: ConversationStats) -> Prepared:
        """Decode, extract, drop what the graph already holds: no graph write, so it may overlap the previous one."""
        outputs: list[Envelope] = []
        events: list[ConversationEvent] = []
        for r in records:
            try:
                ev = parse_event(r.value or b"", ConversationEvent)
            except InvalidEvent as exc:
                dl = self.dead_letter(r, exc)
                outputs.append(dl)
                stats.deadlettered += 1
                self.metrics.deadlettered.labels(r.topic, dl.reason).inc()
                continue
            assert isinstance(ev, ConversationEvent)
            events.append(ev)
        stats.events += len(events)
        topic = records[0].topic if records else ""
        unique = list({str(e.event_id): e for e in events}.values())  # one poll may hold a resend
        extractions: list[Extraction] = []
        if unique:
            t0 = time.perf_counter()
            extractions = self.extractor.extract(unique)
            stats.extract_s += time.perf_counter() - t0
            # Looked up after extracting, not before: the graph is busy writing the previous batch
            # meanwhile, and waiting for it here would undo the overlap. What a redelivery costs is
            # extracting at most the batches whose offsets were not committed yet.
            known = self.graph.known_events([ex.event_id for ex in extractions])
            extractions = [ex for ex in extractions if ex.event_id not in known]
        stats.redelivered += len(events) - len(extractions)
        if len(events) > len(extractions):
            self.metrics.duplicates.labels(topic).inc(len(events) - len(extractions))
        return Prepared(outputs, extractions, topic)

    def finish(self, prepared: Prepared, stats: ConversationStats) -> list[Envelope]:
        """Write the extractions in one transaction; the dead letters and KnowledgeUpdates to publish."""
        outputs = list(prepared.outputs)
        if not prepared.extractions:
            return outputs
        t1 = time.perf_counter()
        # BackPressureError propagates: the caller pauses. Only what this write added counts: a prepared
        # batch may overlap one written after its known_events lookup (a redelivery, pipelined).
        try:
            extractions, validated = write_new(self.graph, prepared.extractions)
        except Exception:
            self.metrics.graph_write_failures.inc()
            raise
        self.metrics.graph_write_seconds.observe(time.perf_counter() - t1)
        stats.write_s += time.perf_counter() - t1
        stats.written += len(extractions)
        stats.redelivered += len(prepared.extractions) - len(extractions)
        self._count_written(prepared, extractions)
        for ex in extractions:
            stats.entities += len(ex.entities)
            stats.relations += len(ex.relations)
            outputs.append(
                KnowledgeUpdate(
                    event_id=derived_id("knowledge", ex.event_id),
                    source=self.source,
                    conversation_id=ex.conversation_id,
                    source_event_id=ex.event_id,  # type: ignore[arg-type]
                    entities=[EntityRef(key=e.key, name=e.name, label=e.label) for e in ex.entities],
                    relations=[
                        RelationRef(
                            subject=r.subject, predicate=r.predicate, object=r.object,
                            confidence=r.confidence, validated=(r.subject, r.predicate, r.object) in validated,
                        )
                        for r in ex.relations
                    ],
                )
            )
        return outputs

    def _count_written(self, prepared: Prepared, written: list[Extraction]) -> None:
        m = self.metrics
        m.conversation_turns.inc(len(written))
        m.graph_entities.inc(sum(len(ex.entities) for ex in written))
        m.graph_relations.inc(sum(len(ex.relations) for ex in written))
        if len(prepared.extractions) > len(written):
            m.duplicates.labels(prepared.topic).inc(len(prepared.extractions) - len(written))


def write_new(
    graph: KnowledgeGraph, extractions: Sequence[Extraction], *, attempts: int = 3
) -> tuple[list[Extraction], set[tuple[str, str, str]]]:
    """Write the extractions as one folded batch; return those written and the facts now validated.

    An event repeated in ``extractions`` counts once. A batch the graph already holds entirely
    writes nothing (a redelivery: none returned); one it holds in part raises ``DuplicateEvents``
    inside the write, whose ids are then dropped and the rest folded again (a concurrent writer).
    """
    fresh = list({ex.event_id: ex for ex in extractions}.values())
    for _ in range(attempts):
        try:
            ids, validated = graph.write_validated(GraphBatch.fold(fresh))
            written = set(ids)
            return [ex for ex in fresh if ex.event_id in written], validated
        except DuplicateEvents as exc:
            log.info("graph: %s; folding the rest again", exc)
            fresh = [ex for ex in fresh if ex.event_id not in exc.event_ids]
    raise GraphError(f"events kept appearing in the graph while writing them ({attempts} attempts)")


class ConversationConsumer:
    """aiokafka batches; commit after the graph write and the published updates."""

    def __init__(
        self,
        *,
        kafka: KafkaConfig,
        group_id: str,
        processor: ConversationProcessor,
        batch_max_records: int = 256,
        batch_timeout_ms: int = 100,
        topics: Topics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.processor = processor
        self.batch_max_records = batch_max_records
        self.batch_timeout_ms = batch_timeout_ms
        self.topics = topics or Topics(kafka.topic_prefix)
        self.stats = ConversationStats()
        self.metrics = processor.metrics
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._life = Lifecycle("conversation")
        self._clock = clock

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            client_id=f"{self.kafka.client_id}-knowledge-out", acks="all", linger_ms=self.kafka.linger_ms,
            **self.kafka.client_kwargs(),
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            self.topics.conversations,
            group_id=self.group_id,
            client_id=f"{self.kafka.client_id}-conversations",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.kafka.heartbeat_interval_ms,
            **self.kafka.client_kwargs(),
        )
        await self._consumer.start()
        log.info("conversation consumer started (group %s)", self.group_id)

    def request_stop(self) -> None:
        self._life.request_stop()

    async def stop(self) -> None:
        """Let run() write and commit the batch in hand, then close the clients."""
        self._life.request_stop()
        await self._life.wait_stopped()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def run(self) -> None:
        """Pipelined: batch k+1 is decoded and extracted while batch k is written, published and committed.

        Offsets are still committed in order and only after their batch is in the graph; a failed
        write discards the prepared batch too and rewinds every assigned partition.
        """
        assert self._consumer is not None and self._producer is not None, "start() first"
        with self._life.running():
            await self._run(self._consumer)

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        delay = 0.5
        pending: asyncio.Future[None] | None = None  # the previous batch: write, publish, commit
        try:
            while not self._life.stopping:
                batch = await consumer.getmany(timeout_ms=self.batch_timeout_ms, max_records=self.batch_max_records)
                try:
                    prepared = None
                    if batch:
                        records = [r for recs in batch.values() for r in recs]
                        for tp, recs in batch.items():
                            self.metrics.events_in.labels(tp.topic).inc(len(recs))
                        prepared = await asyncio.to_thread(self.processor.prepare, records, self.stats)
                    if pending is not None:
                        p, pending = pending, None
                        await asyncio.shield(p)
                    if batch and prepared is not None:
                        pending = asyncio.ensure_future(self._finish(batch, prepared))
                    delay = 0.5
                except _PAUSE as exc:
                    if pending is not None:  # its outcome no longer matters: everything uncommitted is re-read
                        p, pending = pending, None
                        with contextlib.suppress(*_PAUSE):
                            await p
                    self.stats.pauses += 1
                    log.error("knowledge graph write failed (%s); pausing %.1fs, then retrying the batch", exc, delay)
                    await self._life.pause(delay)
                    delay = min(delay * 2, 30.0)
                    await self._rewind(list(consumer.assignment()))
        finally:
            if pending is not None:  # stopping: let the last batch reach the graph and commit
                with contextlib.suppress(*_PAUSE):
                    await asyncio.shield(pending)

    async def _finish(self, batch: dict[TopicPartition, list[Any]], prepared: Prepared) -> None:
        assert self._consumer is not None and self._producer is not None
        t0 = time.perf_counter()
        outputs = await asyncio.to_thread(self.processor.finish, prepared, self.stats)
        await send_and_wait(self._producer, outputs, self.topics)
        await self._consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs})
        self.stats.batches += 1
        self.stats.last_batch_s = time.perf_counter() - t0
        self.metrics.batch_seconds.labels("conversations").observe(self.stats.last_batch_s)

    async def _rewind(self, tps: list[TopicPartition]) -> None:
        """Seek back to the committed offsets so the failed batch is read again."""
        assert self._consumer is not None
        for tp in tps:
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
