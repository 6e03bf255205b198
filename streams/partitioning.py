"""Which feedback partition owns a learner, and the forward of a record that arrived elsewhere.

A learner is one model, held by one partition: its owner, fixed by the Java
client's default partitioner (murmur2 of the learner's name) over the topic's
partition count. The SDK, kafkajs (2.x) and the Java client put a record keyed
by the learner's name there; librdkafka's default (kcat, confluent-kafka) hashes
with CRC32 and does not. A record that arrives on another partition is sent on,
byte for byte, to its owner, which dedups it by ``event_id`` like any other.

Pure functions and data: serving, the CLI and the feedback loop share them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.partitioner import murmur2

from streams.ports import RecordLike

__all__ = ["FORWARDED_FROM", "Forward", "forward", "owner_partition"]

FORWARDED_FROM = "learnloop-forwarded-from"
"""Header added to a forwarded record: ``topic:partition:offset`` where it arrived (the first one is the origin)."""


@functools.lru_cache(maxsize=4096)
def owner_partition(learner: str, partitions: int) -> int:
    """The partition that owns ``learner`` when the feedback topic has ``partitions`` partitions.

    ``murmur2(name) & 0x7fffffff % partitions``, as Java's ``DefaultPartitioner`` computes it
    for a record keyed by the name (aiokafka's default partitioner, which the SDK uses, is the same).

    >>> owner_partition("sea-tree", 3)
    1
    >>> owner_partition("sea-tree", 1)
    0
    """
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    return (int(murmur2(learner.encode())) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Forward:
    """A feedback record to send on to its learner's owner partition."""

    topic: str
    partition: int  # the owner
    key: bytes  # the learner's name, whatever key it arrived with
    value: bytes  # the bytes as they arrived: the owner decodes, dedups and learns them
    headers: tuple[tuple[str, bytes], ...]  # as they arrived, plus FORWARDED_FROM


def forward(rec: RecordLike, *, learner: str, owner: int) -> Forward:
    """The forward of ``rec`` to partition ``owner``: its value and headers, keyed by ``learner``.

    >>> from types import SimpleNamespace
    >>> rec = SimpleNamespace(topic="fb", partition=2, offset=7, key=b"k", value=b"{}", headers=[("trace", b"x")])
    >>> f = forward(rec, learner="sea-tree", owner=1)
    >>> f.partition, f.key, f.headers
    (1, b'sea-tree', (('trace', b'x'), ('learnloop-forwarded-from', b'fb:2:7')))
    """
    # aiokafka's records carry headers; the pipeline's other records (tests, replays) may not.
    headers: Sequence[tuple[str, bytes]] = getattr(rec, "headers", None) or ()
    origin = (FORWARDED_FROM, f"{rec.topic}:{rec.partition}:{rec.offset}".encode())
    return Forward(rec.topic, owner, learner.encode(), rec.value or b"", (*headers, origin))
