"""What the broker knows about consumer groups: committed offsets, members, log-end offsets.

Log-end offsets come from a *fetch* response's high watermark, never from
ListOffsets (aiokafka ``end_offsets``): the embedded broker (Tansu) answers
ListOffsets with the base offset of the last record batch + 1, which is wrong
whenever a batch holds several records, while its fetch responses carry the
right high watermark. The same fetch returns the record at the probed
position, whose timestamp gives the time lag and whose payload gives the
newest event time for model freshness.

The reader never joins a group: probes use a consumer without a group id, and
committed offsets come from the admin OffsetFetch, always with an explicit
partition list (Tansu drops the connection when asked for "all partitions").
Groups are described one per request (Tansu's answer about three or more
groups in one DescribeGroups cannot be decoded), and on Tansu no member has an
assignment, so CONSUMER-ID, HOST and CLIENT-ID show "-" there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from streams.config import KafkaConfig

log = logging.getLogger(__name__)

LIVE_STATES = frozenset({"Stable", "PreparingRebalance", "CompletingRebalance"})


@dataclass(frozen=True)
class Member:
    consumer_id: str
    host: str
    client_id: str


@dataclass(frozen=True)
class GroupInfo:
    """A group's state and members. ``owners`` stays empty when the broker returns no assignments (Tansu)."""

    group: str
    state: str
    members: tuple[Member, ...] = ()
    owners: dict[TopicPartition, Member] = field(default_factory=dict)

    def live(self, tp: TopicPartition) -> bool:
        """Whether a member of the group is consuming ``tp`` (any member, when assignments are unknown)."""
        if not self.members or self.state not in LIVE_STATES:
            return False
        return tp in self.owners if self.owners else True


@dataclass(frozen=True)
class Probe:
    """One fetch at a position: the high watermark, and the first record at or after the position."""

    log_end: int
    offset: int | None = None
    timestamp_ms: int | None = None
    value: bytes | None = None


class OffsetSource(Protocol):
    """What the lag monitor reads; :class:`BrokerReader` is the Kafka one, tests use an in-memory one."""

    async def topics(self) -> dict[str, list[int]]: ...
    async def groups(self) -> list[str]: ...
    async def committed(self, group: str, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]: ...
    async def describe(self, groups: Sequence[str]) -> dict[str, GroupInfo]: ...
    async def probe(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, Probe]: ...


class BrokerReader:
    """Read-only access to groups and partitions; one admin connection, a fresh consumer per probe."""

    def __init__(self, kafka: KafkaConfig, *, fetch_timeout_ms: int = 5_000, fetch_max_bytes: int = 1_048_576) -> None:
        self.kafka = kafka
        self.fetch_timeout_ms = fetch_timeout_ms
        self.fetch_max_bytes = fetch_max_bytes
        self._admin: AIOKafkaAdminClient | None = None

    async def start(self) -> BrokerReader:
        admin = AIOKafkaAdminClient(client_id=f"{self.kafka.client_id}-lag", **self.kafka.client_kwargs())
        try:
            await admin.start()
        except BaseException:
            await admin.close()
            raise
        self._admin = admin
        return self

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def __aenter__(self) -> BrokerReader:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def admin(self) -> AIOKafkaAdminClient:
        assert self._admin is not None, "start() first"
        return self._admin

    async def topics(self) -> dict[str, list[int]]:
        """Every non-internal topic and its partitions."""
        out: dict[str, list[int]] = {}
        for t in await self.admin.describe_topics():
            name = t["topic"]
            if t.get("is_internal") or name.startswith("__") or t.get("error_code", 0) != 0:
                continue
            out[name] = sorted(p["partition"] for p in t["partitions"])
        return dict(sorted(out.items()))

    async def groups(self) -> list[str]:
        """Consumer groups the broker lists (classic protocol ``consumer`` or offsets-only groups)."""
        rows = await self.admin.list_consumer_groups()
        return sorted({str(r[0]) for r in rows if len(r) < 2 or r[1] in ("consumer", "")})

    async def committed(self, group: str, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset per partition; None where it never committed."""
        if not tps:
            return {}
        got = await self.admin.list_consumer_group_offsets(group, partitions=list(tps))
        out: dict[TopicPartition, int | None] = {}
        for tp in tps:
            meta = got.get(tp)
            out[tp] = meta.offset if meta is not None and meta.offset >= 0 else None
        return out

    async def describe(self, groups: Sequence[str]) -> dict[str, GroupInfo]:
        """State and members per group, one request each: Tansu garbles answers about 3+ groups at once."""
        out: dict[str, GroupInfo] = {}
        for group in groups:
            for response in await self.admin.describe_consumer_groups([group]):
                for g in response.to_object()["groups"]:
                    info = _group_info(g)
                    out[info.group] = info
        return out

    async def probe(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, Probe]:
        """Fetch at each position until the first record there (or the log end) is read.

        Partitions the broker did not answer in time are left out; those whose high watermark came but
        whose record did not have a :class:`Probe` without a record.
        """
        if not positions:
            return {}
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            # Out of range (a position before the log start) restarts at the earliest record kept.
            auto_offset_reset="earliest",
            client_id=f"{self.kafka.client_id}-lag-probe",
            max_partition_fetch_bytes=self.fetch_max_bytes,
            fetch_max_wait_ms=10,  # an idle partition answers at once: only its high watermark is wanted
            **self.kafka.client_kwargs(),
        )
        await consumer.start()
        try:
            return await self._probe(consumer, positions)
        finally:
            await consumer.stop()

    async def _probe(self, c: AIOKafkaConsumer, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, Probe]:
        c.assign(list(positions))
        for tp, pos in positions.items():
            c.seek(tp, max(0, pos))
        first: dict[TopicPartition, Any] = {}
        pending = set(positions)
        deadline = time.monotonic() + self.fetch_timeout_ms / 1000
        while pending and time.monotonic() < deadline:
            wait_ms = max(1, min(200, int((deadline - time.monotonic()) * 1000)))
            _keep_first(first, await c.getmany(*pending, timeout_ms=wait_ms))
            answered = {tp: hw for tp in pending if (hw := c.highwater(tp)) is not None}
            if answered:
                # The response that set the high watermark may have buffered records not handed out yet.
                _keep_first(first, await c.getmany(*answered, timeout_ms=0))
            # A high watermark alone is no answer while records lie between the position and it: a broker
            # may fill one fetch response with some partitions' records and send only the high watermark
            # for the others (Tansu does under a backlog). Those stay unpaused, so the next fetch asks
            # again at the same position; taking the first answer made the time lag flap. The consumer's
            # own position is the one compared: it moves past control batches, and to the log start when
            # retention removed the position, where no record may be left before the high watermark.
            done = [tp for tp, hw in answered.items() if tp in first or await _position(c, tp, deadline) >= hw]
            if done:
                c.pause(*done)
                pending.difference_update(done)
        unanswered = {tp for tp in pending if c.highwater(tp) is None}
        if unanswered:
            log.warning("no fetch answer within %d ms for %s", self.fetch_timeout_ms, _names(unanswered))
        if pending - unanswered:
            log.warning("no record within %d ms for %s", self.fetch_timeout_ms, _names(pending - unanswered))
        out: dict[TopicPartition, Probe] = {}
        for tp in positions:
            hw = c.highwater(tp)
            if hw is None:
                continue
            rec = first.get(tp)
            out[tp] = Probe(
                log_end=hw,
                offset=rec.offset if rec is not None else None,
                timestamp_ms=rec.timestamp if rec is not None else None,
                value=rec.value if rec is not None else None,
            )
        return out


async def _position(c: AIOKafkaConsumer, tp: TopicPartition, deadline: float) -> int:
    """Where the consumer will fetch ``tp`` next; -1 while a reset is still under way at the deadline."""
    try:
        return int(await asyncio.wait_for(c.position(tp), timeout=max(0.01, deadline - time.monotonic())))
    except TimeoutError:
        return -1


def _keep_first(first: dict[TopicPartition, Any], batch: Mapping[TopicPartition, list[Any]]) -> None:
    for tp, records in batch.items():
        if records and tp not in first:
            first[tp] = records[0]


def _names(tps: set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(tps))


def _group_info(g: Mapping[str, Any]) -> GroupInfo:
    group = str(g["group"])
    if g.get("error_code", 0) != 0:
        log.warning("describe group %s failed with error code %s", group, g["error_code"])
        return GroupInfo(group, "Unknown")
    listed: list[Member] = []
    owners: dict[TopicPartition, Member] = {}
    for m in g.get("members", []):
        member = Member(str(m["member_id"]), str(m.get("client_host", "")).lstrip("/"), str(m.get("client_id", "")))
        listed.append(member)
        assignment = m.get("member_assignment")
        if g.get("protocol_type") == "consumer" and assignment:
            try:
                decoded = ConsumerProtocolMemberAssignment.decode(assignment)
            except Exception:  # another protocol's bytes: ownership stays unknown, nothing else depends on it
                log.debug("cannot decode the assignment of %s in %s", member.consumer_id, group)
                continue
            for tp in decoded.partitions():
                owners[tp] = member
    return GroupInfo(group, str(g.get("state", "Unknown")), tuple(listed), owners)
