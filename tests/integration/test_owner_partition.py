"""One learner, one model, whatever partition its records arrive on: a real worker process and real producers.

librdkafka's default partitioner (confluent-kafka, kcat) hashes keys with CRC32, not with the Java
client's murmur2, so it puts a learner's records on another partition than the SDK does. The worker
forwards them to the learner's owner partition, effectively once, across a SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer

from schemas import DeadLetter, FeedbackEvent, PredictionEvent, parse_event
from streams.admin import ensure_topics
from streams.partitioning import FORWARDED_FROM, owner_partition
from streams.producer import EventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.test_feedback_worker import assert_matches_reference
from tests.integration.util import cli_json, read_topic, start_worker, stop_worker, wait_for
from tests.reference import SEA_LEARNERS, sea_with_switch
from workers.feedback.redis_store import RedisStore
from workers.settings import Settings

pytestmark = pytest.mark.integration


async def rows_of(store: RedisStore, name: str) -> list[dict[str, Any]]:
    return [s for s in await store.learner_statuses() if s["name"] == name]


async def learned(store: RedisStore, name: str) -> int:
    return sum(int(s["n_learned"]) for s in await rows_of(store, name))


async def learned_all(store: RedisStore, name: str, n: int) -> bool:
    got = await learned(store, name)
    assert got <= n, f"learned {got} of {n} events: something was learned twice"
    return got == n


def produce_with_librdkafka(bootstrap: str, topic: str, events: list[FeedbackEvent], **config: str) -> set[int]:
    """Send with confluent-kafka (by default, partitioner ``consistent_random``); the partitions used."""
    used: set[int] = set()
    failed: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(str(err))
        else:
            used.add(msg.partition())

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config})
    for e in events:
        p.produce(topic, value=e.to_json(), key=e.learner.encode(), on_delivery=delivered)
        p.poll(0)
    assert p.flush(60) == 0, "confluent-kafka could not deliver everything in 60 s"
    assert not failed, failed[:3]
    return used


async def test_librdkafka_partitioned_events_end_in_one_model_across_a_sigkill(
    settings: Settings, store: RedisStore, tmp_path: Path
) -> None:
    # The field report's case: three partitions, "sea-tree" owned by 1, CRC32 puts it on 2.
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"partitions": 3})})
    settings.learners_file.write_text(SEA_LEARNERS.replace("learners.sea", "learners.sea-tree"))
    topics = Topics(settings.kafka.topic_prefix)
    await ensure_topics(settings.kafka, topics.all())
    owner, elsewhere = owner_partition("sea-tree", 3), zlib.crc32(b"sea-tree") % 3
    assert (owner, elsewhere) == (1, 2)
    stream = sea_with_switch(3000, 3000)
    events = [FeedbackEvent(learner="sea-tree", features=x, label=y, source="test") for x, y in stream]
    env = {**worker_env(settings), "LEARNLOOP_FEEDBACK__BATCH_MAX_RECORDS": "250",
           "LEARNLOOP_FEEDBACK__SNAPSHOT_EVERY_EVENTS": "1000"}
    bootstrap = settings.kafka.bootstrap_servers
    assert await asyncio.to_thread(produce_with_librdkafka, bootstrap, topics.feedback, events[:4000]) == {elsewhere}
    worker = start_worker(env, tmp_path / "worker-1.log")
    try:
        await wait_for(lambda: _above(store, 1500), timeout=120, every=0.01, what="learning under way")
        os.kill(worker.pid, signal.SIGKILL)  # forwarded but not yet snapshotted: sent again after the restart
        worker.wait(10)
        await asyncio.to_thread(produce_with_librdkafka, bootstrap, topics.feedback, events[4000:])
        worker = start_worker(env, tmp_path / "worker-2.log")
        await wait_for(lambda: learned_all(store, "sea-tree", len(events)), timeout=180, what="all events learned")
        await wait_for(lambda: _forwarded(store, elsewhere, len(events)), timeout=30, what="progress published")
        [status] = cli_json(env, "learners", "--json")
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker-2.log").read_text()[-3000:]
    # One model, on the owner partition, equal to River fed the same sequence in-process: nothing twice.
    assert (status["name"], status["partition"], status["owner_partition"], status["split"]) == (
        "sea-tree", owner, owner, False
    )
    assert_matches_reference(status, stream)


async def test_librdkafka_with_murmur2_random_sends_to_the_owner(settings: Settings) -> None:
    # What the README tells kcat and confluent-kafka users to set.
    topic = Topics(settings.kafka.topic_prefix).feedback
    await ensure_topics(settings.kafka, [topic], partitions=3)
    events = [FeedbackEvent(learner=name, features={"x": 1.0}, label=True, source="test")
              for name in ("sea-tree", "churn-eu", "churn-us") for _ in range(5)]
    for name in ("sea-tree", "churn-eu", "churn-us"):
        mine = [e for e in events if e.learner == name]
        used = await asyncio.to_thread(produce_with_librdkafka, settings.kafka.bootstrap_servers, topic, mine,
                                       partitioner="murmur2_random")
        assert used == {owner_partition(name, 3)}, name


async def test_records_on_any_partition_joined_or_not_learn_one_model(
    settings: Settings, store: RedisStore, tmp_path: Path
) -> None:
    settings.learners_file.write_text(SEA_LEARNERS)
    topics = Topics(settings.kafka.topic_prefix)
    await ensure_topics(settings.kafka, topics.all())
    owner = owner_partition("sea", 2)
    other = 1 - owner
    rng = random.Random(11)
    stream = sea_with_switch(800, 0)
    direct = [FeedbackEvent(learner="sea", features=x, label=y, source="test") for x, y in stream[:600]]
    predicted = [(str(uuid.uuid4()), x, y) for x, y in stream[600:]]
    predictions = [PredictionEvent(prediction_id=pid, learner="sea", features=x, prediction=True, model_version="1",
                                   source="test") for pid, x, _ in predicted]
    labels = [FeedbackEvent(learner="sea", prediction_id=pid, label=y, source="test") for pid, _, y in predicted]
    # Schema-valid but not learnable, under another learner's key: no empty "sea" slot on that partition.
    maybe = FeedbackEvent(learner="sea", features={"x0": 1.0}, label="maybe", source="test")
    chosen = [rng.choice([0, 1]) for _ in direct]
    astray = [e for e, partition in zip(direct, chosen, strict=True) if partition == other]
    worker = start_worker(worker_env(settings), tmp_path / "worker.log")
    try:
        raw = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
        await raw.start()
        try:
            for e, partition in zip(direct, chosen, strict=True):  # each on a partition of its own choosing
                await raw.send(topics.feedback, e.to_json(), key=b"sea", partition=partition)
            async with EventProducer(settings.kafka) as sdk:
                await sdk.send_many(predictions)
            for e in labels:  # the label arrives on the partition that does not own its learner
                await raw.send(topics.feedback, e.to_json(), key=b"churn", partition=other,
                               headers=[("trace", b"t")])
            await raw.send(topics.feedback, maybe.to_json(), key=b"churn", partition=other)
            await raw.flush()
        finally:
            await raw.stop()
        await wait_for(lambda: learned_all(store, "sea", len(stream)), timeout=120, what="all events learned")
        dead = await read_topic(settings.kafka, topics.deadletter, expect=1)
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    [letter] = [parse_event(r.value, DeadLetter) for r in dead]
    assert isinstance(letter, DeadLetter)
    # Dead-lettered where it arrived (it needs no state to be refused), with the coordinates it was sent to.
    assert (letter.reason, letter.partition, letter.payload_bytes()) == ("unmappable_label", other, maybe.to_json())
    [status] = await store.learner_statuses()  # one learner, one row: no empty slot anywhere
    assert (status["name"], status["partition"], status["n_learned"], status["split"]) == (
        "sea", owner, len(stream), False
    )
    assert status["metrics"]["accuracy"] > 0.7
    n_sent = len(direct) + len(labels) + 1
    everything = await read_topic(settings.kafka, topics.feedback, expect=n_sent + len(astray) + len(labels))
    forwarded = [r for r in everything if r.partition == owner and any(k == FORWARDED_FROM for k, _ in r.headers)]
    assert len(forwarded) == len(astray) + len(labels)  # no crash here: each forwarded once
    assert all(r.key == b"sea" for r in forwarded)
    assert any(("trace", b"t") in r.headers for r in forwarded)  # headers travel with the record


async def _above(store: RedisStore, n: int) -> bool:
    return await learned(store, "sea-tree") > n


async def _forwarded(store: RedisStore, partition: int, n: int) -> bool:
    # Counters live in the snapshot: a replay after the kill counts again only what the snapshot had not.
    rows = [r for r in await store.progress() if r["partition"] == partition and r["topic"].endswith("feedback")]
    return bool(rows) and rows[0]["counters"].get("forwarded") == n


async def test_learners_shows_a_split_learner_twice_and_partition_names_the_owner(
    settings: Settings, store: RedisStore
) -> None:
    env = worker_env(settings)

    def status(partition: int, n: int) -> dict[str, object]:
        return {"name": "sea-tree", "task": "binary", "model": "logistic_regression", "n_learned": n,
                "metrics": {"accuracy": 0.9}, "drifts": 0, "topic": "fb", "partition": partition,
                "owner_partition": 1}

    await store.commit("fb", 1, snapshot=b"a", offset=9, event_ids=[], statuses={"sea-tree": status(1, 2_170)})
    await store.commit("fb", 2, snapshot=b"b", offset=9, event_ids=[], statuses={"sea-tree": status(2, 50)})
    rows = cli_json(env, "learners", "--json")
    assert [(r["partition"], r["n_learned"], r["split"], r["owner_partition"]) for r in rows] == [
        (1, 2_170, True, 1), (2, 50, True, 1),
    ]
    table = subprocess.run([sys.executable, "-m", "workers.cli", "learners"], env={**env, "COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "1 (owner)" in table and "2 (split; owner 1)" in table and "2,170" in table and "50" in table
    assert "sea-tree: held by more than one partition" in table

    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())  # two partitions
    said = subprocess.run([sys.executable, "-m", "workers.cli", "partition", "sea", "sea-tree", "churn-eu"], env=env,
                          capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert said[1:] == [f"{n}\t{owner_partition(n, 2)}" for n in ("sea", "sea-tree", "churn-eu")]
