"""The I/O the streams layer needs, as small protocols.

The Redis adapters live in ``workers.feedback.redis_store``; tests of the pipeline use
in-memory ones. The pipeline never knows which it talks to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class RecordLike(Protocol):
    """What the pipeline reads from a consumed record (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class PartitionStateStore(Protocol):
    """Snapshots of one input partition's state, committed atomically with its dedup ids."""

    async def load(self, topic: str, partition: int) -> bytes | None: ...

    async def seen(self, topic: str, partition: int, event_ids: Sequence[str]) -> list[bool]: ...

    async def recent_ids(self, topic: str, partition: int) -> list[str]:
        """The partition's dedup window, oldest first."""
        ...

    async def commit(
        self,
        topic: str,
        partition: int,
        *,
        snapshot: bytes,
        offset: int,
        event_ids: Sequence[str],
        statuses: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Write the snapshot, remember the ids and publish learner statuses, all or nothing."""
        ...

    async def publish_progress(
        self,
        group: str,
        topic: str,
        partition: int,
        *,
        position: int,
        highwater: int | None,
        counters: Mapping[str, int] | None = None,
    ) -> None: ...

    async def publish_failure(
        self, group: str, topic: str, partition: int, *, position: int, reason: str, message: str
    ) -> None:
        """Record, where lag views read progress, why the partition stopped being processed.

        ``reason`` is a short tag (``snapshot_signature``, ...), ``message`` the worker's line;
        the next ``publish_progress`` for the partition clears both.
        """
        ...


class JoinStore(Protocol):
    """Features stored at prediction time, looked up when the label arrives."""

    async def put_predictions(self, rows: Sequence[tuple[str, bytes]], *, ttl_s: int) -> None: ...

    async def get_predictions(self, prediction_ids: Sequence[str]) -> list[bytes | None]: ...


class ModelStore(Protocol):
    """Published learner models: signed snapshots by learner and version (``workers.serving`` is the Redis one).

    Versions are integers that only grow per learner: :meth:`publish` stores nothing when the
    store already holds that version or a newer one, so a version is never rewritten.
    """

    async def publish(self, learner: str, version: int, blob: bytes) -> tuple[bool, int]:
        """Store ``blob`` as ``version`` and make it the latest unless one ``>= version`` is there.

        Returns whether it was stored, and the latest version after the call.
        """
        ...

    async def fetch(self, learner: str, version: int) -> bytes | None:
        """The blob of one version; ``None`` when it was never published or has expired."""
        ...

    async def fetch_latest(self, learner: str) -> tuple[int, bytes] | None:
        """The latest version and its blob, read together; ``None`` when nothing is published."""
        ...

    async def latest_versions(self, learners: Sequence[str] | None = None) -> dict[str, int]:
        """The latest version of each of ``learners`` that has one (every published learner when ``None``)."""
        ...

    def uri(self, learner: str, version: int) -> str:
        """Where one version is, as announced in ``ModelUpdate.uri``."""
        ...

    async def close(self) -> None:
        """Release the connections (a predictor built with ``own_store`` calls it when it stops)."""
        ...


class SampleSink(Protocol):
    """Where learned feedback goes for later fine-tuning (the SQL feedback store).

    Called with the samples of everything learned since the last snapshot, just
    before the snapshot is committed; must be idempotent by ``event_id`` since a
    replay after a crash sends them again.
    """

    async def add_samples(self, samples: Sequence[Any]) -> None: ...
