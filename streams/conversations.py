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
from streams.feedback import RawRecord, derived_id
from streams.producer import route
from streams.topics import Topics

log = logging.getLogger(__name__)


class Extractor(Protocol):
    def extract(self, events: Sequence[ConversationEvent]) -> list[Extraction]: ...


class KnowledgeGraph(Protocol):
    def known_events(self, event_ids: Sequence[str]) -> set[str]: ...

    def write(self, batch: GraphBatch) -> list[str]: ...

    def validated(self, relations: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]: ...


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


class ConversationProcessor:
    """Decode, extract, write one batch; returns the events to publish. Plain code, no Kafka."""

    def __init__(self, *, extractor: Extractor, graph: KnowledgeGraph, source: str) -> None:
        self.extractor = extractor
        self.graph = graph
        self.source = source

    def dead_letter(self, raw: RawRecord, exc: BaseException) -> DeadLetter:
        dl = DeadLetter.from_record(
            topic=raw.topic, partition=raw.partition, offset=raw.offset, key=raw.key, value=raw.value,
            error=exc, source=self.source,
        )
        return dl.model_copy(update={"event_id": derived_id("deadletter", raw.topic, raw.partition, raw.offset)})

    def process(self, records: Sequence[Any], stats: ConversationStats) -> list[Envelope]:
        """Blocking (spaCy and the graph client are synchronous): run it in a thread."""
        outputs: list[Envelope] = []
        events: list[ConversationEvent] = []
        for r in records:
            raw = RawRecord(r.topic, r.partition, r.offset, r.key, r.value)
            try:
                ev = parse_event(raw.value or b"", ConversationEvent)
            except InvalidEvent as exc:
                outputs.append(self.dead_letter(raw, exc))
                stats.deadlettered += 1
                continue
            assert isinstance(ev, ConversationEvent)
            events.append(ev)
        stats.events += len(events)
        unique = list({str(e.event_id): e for e in events}.values())  # one poll may hold a resend
        known = self.graph.known_events([str(e.event_id) for e in unique]) if unique else set()
        fresh = [e for e in unique if str(e.event_id) not in known]
        stats.redelivered += len(events) - len(fresh)
        if not fresh:
            return outputs
        t0 = time.perf_counter()
        extractions = self.extractor.extract(fresh)
        t1 = time.perf_counter()
        batch = self._write(extractions)  # BackPressureError propagates: the caller pauses
        validated = self.graph.validated([(r.subject, r.predicate, r.object) for r in batch.relations])
        t2 = time.perf_counter()
        stats.extract_s += t1 - t0
        stats.write_s += t2 - t1
        stats.written += len(fresh)
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

    def _write(self, extractions: list[Extraction], attempts: int = 3) -> GraphBatch:
        for _ in range(attempts):
            batch = GraphBatch.fold(extractions)
            try:
                self.graph.write(batch)
                return batch
            except DuplicateEvents:  # a concurrent writer got some of them first
                known = self.graph.known_events([ex.event_id for ex in extractions])
                extractions = [ex for ex in extractions if ex.event_id not in known]
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
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
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
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def run(self) -> None:
        assert self._consumer is not None and self._producer is not None, "start() first"
        delay = 0.5
        while not self._stopping.is_set():
            batch = await self._consumer.getmany(timeout_ms=self.batch_timeout_ms, max_records=self.batch_max_records)
            if not batch:
                continue
            try:
                await asyncio.shield(asyncio.ensure_future(self._step(batch)))
                delay = 0.5
            except (BackPressureError, StoreUnavailable, KafkaError, OSError) as exc:
                self.stats.pauses += 1
                log.error("knowledge graph write failed (%s); pausing %.1fs, then retrying the batch", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                await self._rewind(list(batch))

    async def _step(self, batch: dict[TopicPartition, list[Any]]) -> None:
        assert self._consumer is not None and self._producer is not None
        t0 = time.perf_counter()
        records = [r for recs in batch.values() for r in recs]
        outputs = await asyncio.to_thread(self.processor.process, records, self.stats)
        futures = []
        for e in outputs:
            topic, key = route(e, self.topics)
            futures.append(await self._producer.send(topic, value=e.to_json(), key=key))
        await asyncio.gather(*futures)
        await self._consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs})
        self.stats.batches += 1
        self.stats.last_batch_s = time.perf_counter() - t0

    async def _rewind(self, tps: list[TopicPartition]) -> None:
        """Seek back to the committed offsets so the failed batch is read again."""
        assert self._consumer is not None
        for tp in tps:
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
