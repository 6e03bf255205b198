"""Topic creation. Workers and the SDK call this at start so a fresh cluster just works."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.config import KafkaConfig

log = logging.getLogger(__name__)


async def ensure_topics(kafka: KafkaConfig, names: Iterable[str], *, partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = AIOKafkaAdminClient(client_id=f"{kafka.client_id}-admin", **kafka.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if not missing:
            return []
        new = [
            NewTopic(n, num_partitions=partitions or kafka.partitions, replication_factor=kafka.replication_factor)
            for n in missing
        ]
        with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
            await admin.create_topics(new)
        log.info("created topics: %s", ", ".join(missing))
        return missing
    finally:
        await admin.close()
