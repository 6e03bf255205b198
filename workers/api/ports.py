"""What the gateway needs from the outside world, as small ports, and their real adapters.

Tests of request handling give ``create_app`` stand-ins (an object that records
what it was asked to publish); the server builds the adapters below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from streams.producer import EventProducer


class Record(NamedTuple):
    """One message for the broker: topic, key (the contract's) and value (the event's JSON)."""

    topic: str
    key: bytes | None
    value: bytes


class EventPublisher(Protocol):
    async def publish(self, records: Sequence[Record]) -> None:
        """Return once the broker acknowledged every record; raise if any was not."""

    async def ping(self) -> None:
        """Raise unless the broker answers a metadata request."""


class StatusStore(Protocol):
    """The read side of ``workers.feedback.redis_store.RedisStore`` the gateway uses."""

    async def learner_statuses(self) -> list[dict[str, Any]]: ...

    async def recent_drifts(self, limit: int = 20) -> list[dict[str, Any]]: ...

    async def ping(self) -> bool: ...


class LearnerNotDeclared(LookupError):
    """The learner is not in the learners file: the gateway serves declared learners only (404)."""


class NoServedVersion(LookupError):
    """The learner is declared but no version of it is served yet (409)."""


@dataclass(frozen=True, slots=True)
class ServedAnswer:
    """One prediction: the class and its probabilities (classifier), or the value and ``None`` (regressor)."""

    label: Any
    probabilities: Mapping[Any, float] | None


class ServedLearner(Protocol):
    """One complete, verified version of a learner; held for a whole request, never changed under it."""

    @property
    def version(self) -> str: ...

    def predict(self, rows: Sequence[dict[str, Any]]) -> list[ServedAnswer]: ...


class ServingModels(Protocol):
    """The learners' served versions, following new ones as they are published."""

    def served(self, learner: str) -> ServedLearner:
        """The version serving now; ``LearnerNotDeclared`` or ``NoServedVersion`` when there is none."""

    def versions(self) -> dict[str, dict[str, Any]]:
        """Per declared learner, what is served (``version`` null when nothing is), for the status page."""


class KafkaPublisher:
    """``EventPublisher`` on a started :class:`EventProducer`.

    It awaits the futures of its own sends, not ``EventProducer.flush``: a flush
    drains every request's futures, so one request could see another's failure
    and answer 202 for events the broker refused.
    """

    def __init__(self, producer: EventProducer) -> None:
        self.producer = producer

    async def publish(self, records: Sequence[Record]) -> None:
        client = self.producer.producer
        acks = [await client.send(r.topic, value=r.value, key=r.key) for r in records]
        await asyncio.gather(*acks)

    async def ping(self) -> None:
        await self.producer.producer.client.fetch_all_metadata()
