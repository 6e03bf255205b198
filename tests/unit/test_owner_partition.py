"""One learner, one model: the owner partition rule and the processor's forwards, over in-memory ports."""

from __future__ import annotations

import asyncio
import random
import string
import zlib
from collections import Counter
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry

from learners.config import LearnersConfig
from schemas import DeadLetter
from streams.feedback import LearnerSlot, PartitionState
from streams.metrics import FeedbackMetrics
from streams.partitioning import FORWARDED_FROM, owner_partition
from tests.unit.test_api_history import Recorder
from tests.unit.test_feedback_processor import TOPIC, Record, feedback, records, rig
from tests.unit.test_live_models import Clock, MemoryModelStore, publisher, trained
from workers.api.history import HistorySampler, Point

# org.apache.kafka.common.utils.Utils.murmur2 of these UTF-8 keys, as the Java client computes them
# (the vectors kafkajs checks its Java-compatible partitioner against).
JAVA_MURMUR2 = {
    "0": 971027396, "1": -1993445489, "128": -326012175, "2187": -1508407203, "16384": -325739742,
    "78125": -1654490814, "279936": 1462227128, "823543": -2014198330, "2097152": 607668903,
    "4782969": -1182699775, "10000000": -1830336757, "19487171": -1603849305, "35831808": -857013643,
    "62748517": -1167431028, "105413504": -381294639, "170859375": -1658323481, "100:48069": 1009543857,
}  # fmt: skip


def test_the_owner_is_the_java_default_partition_of_the_name() -> None:
    for key, java_hash in JAVA_MURMUR2.items():
        for n in (1, 2, 3, 7, 12, 100):
            # Java: Utils.toPositive(murmur2(key)) % n, toPositive being & 0x7fffffff
            assert owner_partition(key, n) == (java_hash & 0x7FFFFFFF) % n, (key, n)


def test_the_sdk_partitioner_puts_a_learners_records_on_its_owner() -> None:
    # EventProducer keys feedback by the learner name and leaves aiokafka's default partitioner in place.
    rng = random.Random(5)
    names = ["".join(rng.choices(string.ascii_letters + "-_.:", k=rng.randint(1, 40))) for _ in range(500)]
    for name in ["sea", "sea-tree", "churn-eu", "churn-us", *names]:
        for n in (1, 2, 3, 8, 24):
            parts = list(range(n))
            assert DefaultPartitioner()(name.encode(), parts, parts) == owner_partition(name, n)


def test_librdkafkas_default_puts_sea_tree_elsewhere() -> None:
    # The field report: kcat (CRC32, 'consistent_random') sent sea-tree to 2, the owner is 1.
    assert (zlib.crc32(b"sea-tree") % 3, owner_partition("sea-tree", 3)) == (2, 1)


async def test_an_event_of_a_learner_owned_elsewhere_is_forwarded_as_it_came() -> None:
    r = rig()  # partition 0 of two; "sea" is owned by 0
    r.state = PartitionState(TOPIC, 1)
    ev = feedback()
    raw = Record(TOPIC, 1, 41, b"some-other-key", ev.to_json(), headers=[("trace", b"t-1")])
    result = await r.processor.process(r.state, [raw], partitions=2)
    [fwd] = result.forwards
    assert (fwd.topic, fwd.partition, fwd.key, fwd.value) == (TOPIC, 0, b"sea", raw.value)
    assert fwd.headers == (("trace", b"t-1"), (FORWARDED_FROM, f"{TOPIC}:1:41".encode()))
    assert result.learned == 0 and result.outputs == [] and r.state.slots == {}
    assert r.state.uncommitted_ids == []  # the owner dedups it, not the partition it passed through
    assert r.state.offset == 41 and r.state.counters["forwarded"] == 1


async def test_what_the_event_and_the_learners_file_decide_is_dead_lettered_where_it_arrives() -> None:
    r = rig()  # strict: only "sea" is configured
    r.state = PartitionState(TOPIC, 1)
    assert owner_partition("spook", 2) == owner_partition("sea", 2) == 0
    bad = [b"{not json", feedback(learner="spook"), feedback(label="maybe")]
    result = await r.processor.process(r.state, records([*bad, feedback()], partition=1), partitions=2)
    assert [(dl.reason, dl.partition, dl.offset) for dl in result.outputs if isinstance(dl, DeadLetter)] == [
        ("invalid_json", 1, 0), ("unknown_learner", 1, 1), ("unmappable_label", 1, 2),
    ]
    assert [(f.key, f.headers[-1][1]) for f in result.forwards] == [(b"sea", f"{TOPIC}:1:3".encode())]
    assert r.state.slots == {}


async def test_the_owner_learns_and_other_partitions_forward() -> None:
    events = [feedback(learner=name, label=i % 2 == 0) for i, name in enumerate(["sea", "a", "sea", "b"] * 5)]
    anyone = rig(learners=LearnersConfig.from_mapping({"learners": {}}))  # not strict: every name learns
    learned_where: Counter[tuple[str, int]] = Counter()
    for partition in (0, 1, 2):
        state = PartitionState(TOPIC, partition)
        result = await anyone.processor.process(state, records(events, partition=partition), partitions=3)
        for name, slot in state.slots.items():
            learned_where[(name, partition)] += slot.learner.n_seen
        assert {f.partition for f in result.forwards} <= {0, 1, 2} - {partition}
        assert len(result.forwards) + result.learned == len(events)
    assert learned_where == Counter({("sea", 2): 10, ("a", 1): 5, ("b", 2): 5})


async def test_a_record_that_cannot_be_learned_leaves_no_empty_slot() -> None:
    r = rig()
    result = await r.processor.process(r.state, records([feedback(label="maybe")]))
    assert [dl.reason for dl in result.outputs if isinstance(dl, DeadLetter)] == ["unmappable_label"]
    assert r.state.slots == {} and r.state.statuses() == {}  # no status of 0 events to stand for the model


async def test_forwards_are_counted_in_the_metrics() -> None:
    r = rig()
    r.state = PartitionState(TOPIC, 1)
    m = FeedbackMetrics(CollectorRegistry())
    m.record_batch(TOPIC, 3, await r.processor.process(r.state, records([feedback()] * 3, partition=1), partitions=2))
    assert m.registry.get_sample_value("learnloop_events_forwarded_total", {"topic": TOPIC}) == 3.0


async def test_statuses_name_the_owner_partition() -> None:
    r = rig()
    await r.processor.process(r.state, records([feedback()]), partitions=2)
    assert r.state.statuses(2)["sea"]["owner_partition"] == owner_partition("sea", 2) == 0


def test_only_the_owners_model_is_published() -> None:
    # After the partition count grew to 3, "sea-tree" (owned by 1) still has its older model on 2.
    p, _ = publisher(MemoryModelStore(), Clock())
    owner, left_behind = PartitionState(TOPIC, 1), PartitionState(TOPIC, 2)
    owner.slots = {"sea-tree": LearnerSlot(trained("sea-tree", 10))}
    left_behind.slots = {"sea-tree": LearnerSlot(trained("sea-tree", 500))}
    assert p.capture([left_behind, owner], partitions=3) == 1
    assert p._pending["sea-tree"].version == 10  # the model that learns now, not the bigger stale one


def test_the_status_history_follows_the_owners_model_of_a_split_learner() -> None:
    async def statuses() -> list[dict[str, Any]]:
        row = {"name": "sea-tree", "metrics": {"accuracy": 0.9}, "owner_partition": 1, "split": True}
        return [{**row, "partition": 1, "n_learned": 2_170, "learned_at": 5.0},
                {**row, "partition": 2, "n_learned": 50, "learned_at": 4.0}]  # listed last, and left behind

    rec = Recorder()
    assert asyncio.run(HistorySampler(statuses, rec, every_s=1.0).sample(now=9.0)) == 1  # type: ignore[arg-type]
    assert rec.appended == [{"sea-tree": Point(5.0, 2_170, "accuracy", 0.9)}]
