"""What the gateway needs from the outside world, as small ports, and their real adapters.

Tests of request handling give ``create_app`` stand-ins (an object that records
what it was asked to publish); the server builds the adapters below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from streams.producer import EventProducer
from workers.api.history import Point


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


class LearnerUnknown(LookupError):
    """Not in the learners file and never published: no such learner (404)."""


class NoServedVersion(LookupError):
    """A known learner with no version served yet: nothing learned or published so far (409)."""


class ServedPrediction(Protocol):
    """One prediction as the predictor makes it (``streams.predictor.Prediction``)."""

    @property
    def learner(self) -> str: ...

    @property
    def prediction_id(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    @property
    def label(self) -> Any: ...

    @property
    def probabilities(self) -> Mapping[Any, float] | None: ...

    @property
    def value(self) -> float | None: ...


class ServingModels(Protocol):
    """The learners' served versions, following new ones as they are published."""

    def check(self, learner: str) -> None:
        """Raise ``LearnerUnknown`` or ``NoServedVersion`` unless ``learner`` is served."""

    def predict(
        self,
        learner: str,
        inputs: Sequence[tuple[Mapping[str, Any] | None, str | None]],
        *,
        subject_ids: Sequence[str | None],
        log: bool,
    ) -> Sequence[ServedPrediction]:
        """One prediction per ``(features, text)``, all from one version; logged (with its subject) unless ``log``
        is false."""

    def versions(self) -> dict[str, dict[str, Any]]:
        """Per known learner, what is served (``version`` null while nothing is), for the status page."""


class HistoryStore(Protocol):
    """What the history route reads: ``workers.api.history.LearnerHistory``."""

    async def points(self, learner: str) -> list[Point]: ...


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
