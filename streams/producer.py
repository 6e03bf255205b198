"""Producer SDK: validate before sending, key as the contract says, batch.

``EventProducer`` is the asyncio client; ``SyncEventProducer`` wraps it for
threaded code and scripts. Both accept event models or plain dicts (which are
validated with the same schemas the workers use, so a bad event fails in the
app that made it, not in a dead-letter topic).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas import (
    ConversationEvent,
    DeadLetter,
    DriftEvent,
    DriftEventV2,
    Envelope,
    FeedbackEvent,
    KnowledgeUpdate,
    ModelUpdate,
    PredictionEvent,
    RetrainRequest,
    RolloutEvent,
    fill_envelope,
    parse_event,
)
from streams.config import KafkaConfig
from streams.loopthread import BlockingClient
from streams.topics import Topics

EventLike = Envelope | Mapping[str, Any] | bytes | str


def route(event: Envelope, topics: Topics) -> tuple[str, bytes | None]:
    """The topic and key an event goes to (DESIGN.md, 'Topics').

    >>> from schemas import ConversationEvent
    >>> e = ConversationEvent(conversation_id="c1", turn=0, role="user", text="hi", source="doc")
    >>> route(e, Topics())
    ('learnloop.conversations', b'c1')
    """
    if isinstance(event, FeedbackEvent):
        return topics.feedback, event.learner.encode()
    if isinstance(event, PredictionEvent):
        return topics.predictions, event.prediction_id.encode()
    if isinstance(event, ConversationEvent):
        return topics.conversations, event.conversation_id.encode()
    if isinstance(event, (DriftEvent, DriftEventV2)):
        return topics.drift, event.learner.encode()
    if isinstance(event, RetrainRequest):
        return topics.retrain, event.model.encode()
    if isinstance(event, ModelUpdate):
        return topics.model_updates, event.model.encode()
    if isinstance(event, KnowledgeUpdate):
        return topics.knowledge, event.conversation_id.encode()
    if isinstance(event, RolloutEvent):
        return topics.rollouts, event.model.encode()
    if isinstance(event, DeadLetter):
        return topics.deadletter, event.key.encode() if event.key is not None else None
    raise TypeError(f"no topic for {type(event).__name__}")


def as_event(item: EventLike) -> Envelope:
    """Validate a dict/JSON into its event model; models pass through (they are frozen and valid).

    A dict is what the caller means to send: a missing ``event_id`` or ``occurred_at`` is
    filled in (a new id, the current time), as constructing a model does; ``schema`` it must
    name, since it picks the topic. JSON text is taken as the record itself and must be complete.
    """
    if isinstance(item, Envelope):
        return item
    return parse_event(item if isinstance(item, bytes | str) else fill_envelope(item))


def record_headers(event: Envelope) -> list[tuple[str, bytes]] | None:
    """Kafka headers an event travels with: a dead letter's reason and source coordinates, else none."""
    return event.headers() if isinstance(event, DeadLetter) else None


async def send_and_wait(producer: AIOKafkaProducer, events: Iterable[Envelope], topics: Topics) -> None:
    """Send each event to its topic with its key (:func:`route`), then wait until every one is acknowledged."""
    futures = []
    for e in events:
        topic, key = route(e, topics)
        futures.append(await producer.send(topic, value=e.to_json(), key=key, headers=record_headers(e)))
    await asyncio.gather(*futures)


class EventProducer:
    """Async producer for learnloop events.

    Sends are batched by the underlying client (``linger_ms``); ``send`` returns once
    the event is queued, ``flush`` waits for the broker to acknowledge everything.
    """

    def __init__(self, kafka: KafkaConfig, *, topics: Topics | None = None, acks: int | str = "all") -> None:
        self._kafka = kafka
        self.topics = topics or Topics(kafka.topic_prefix)
        self._acks = acks
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            client_id=f"{self._kafka.client_id}-producer",
            acks=self._acks,
            linger_ms=self._kafka.linger_ms,
            max_batch_size=self._kafka.max_batch_size,
            enable_idempotence=False,
            **self._kafka.client_kwargs(),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # an unreachable broker must not leave an open client behind
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            try:
                await self.flush()
            finally:
                await self._producer.stop()
                self._producer = None

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("producer is not started: use 'async with EventProducer(...)' or await start()")
        return self._producer

    async def send(self, item: EventLike) -> Envelope:
        """Validate and queue one event; returns the validated event (with its event_id)."""
        event = as_event(item)
        topic, key = route(event, self.topics)
        fut = await self.producer.send(topic, value=event.to_json(), key=key, headers=record_headers(event))
        self._pending.append(fut)
        if len(self._pending) >= 10_000:
            await self._drain()
        return event

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Send bytes as they are (tests of bad input, replaying dead letters)."""
        self._pending.append(await self.producer.send(topic, value=value, key=key))

    async def send_many(self, items: Iterable[EventLike]) -> list[Envelope]:
        events = [as_event(i) for i in items]  # validate all before sending any
        for e in events:
            await self.send(e)
        return events

    async def _drain(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

    async def flush(self) -> None:
        await self.producer.flush()
        await self._drain()



class SyncEventProducer(BlockingClient[EventProducer]):
    """Blocking wrapper around :class:`EventProducer` for scripts and threaded apps.

    A private event loop runs in a daemon thread; every call is thread-safe.
    """

    def __init__(self, kafka: KafkaConfig, *, topics: Topics | None = None, acks: int | str = "all") -> None:
        super().__init__(EventProducer(kafka, topics=topics, acks=acks), "learnloop-producer")

    @property
    def topics(self) -> Topics:
        return self._async.topics

    def send(self, item: EventLike) -> Envelope:
        return self._call(self._async.send(item))

    def send_many(self, items: Iterable[EventLike]) -> list[Envelope]:
        return self._call(self._async.send_many(list(items)))

    def flush(self) -> None:
        self._call(self._async.flush())
