"""`learnloop worker feedback` serves Prometheus metrics that count exactly what was produced."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas import FeedbackEvent
from streams.admin import ensure_topics
from streams.metrics import FeedbackMetrics
from streams.producer import EventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.util import cli_json, learnloop_families, start_worker, stop_worker, wait_for
from tests.reference import SEA_LEARNERS as LEARNERS
from tests.reference import river_reference, sea_with_switch
from tests.unit.test_metrics import FAMILIES
from workers.settings import Settings

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= lab}


async def test_feedback_worker_metrics_count_exactly_what_was_produced(settings: Settings, tmp_path: Path) -> None:
    settings.learners_file.write_text(LEARNERS)
    stream = sea_with_switch(3000, 3000)
    events = [FeedbackEvent(learner="sea", features=x, label=y, source="test") for x, y in stream]
    topics = Topics(settings.kafka.topic_prefix)
    port = free_port()
    env = {**worker_env(settings), "LEARNLOOP_METRICS__PORT": str(port)}
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        await ensure_topics(settings.kafka, topics.all())
        async with EventProducer(settings.kafka) as p:
            await p.send_many(events)
            for raw in (b"not json", b"{", b"[1, 2"):
                await p.send_raw(topics.feedback, raw, key=b"sea")
            for raw in (b'{"schema": "feedback/1"}', b'{"schema": "feedback/1", "learner": "sea"}'):
                await p.send_raw(topics.feedback, raw, key=b"sea")
            for e in events[:4]:  # resent: dropped by event_id
                await p.send_raw(topics.feedback, e.to_json(), key=b"sea")
            for raw in (b"nope", b"{}"):
                await p.send_raw(topics.predictions, raw, key=b"p")
        produced = len(events) + 3 + 2 + 4

        ref = river_reference(stream, delta=0.002, cooldown=1000, grace=30)
        assert ref.drifts, "the stream should drift"
        samples: Samples = {}

        async def counted() -> bool:
            nonlocal samples
            try:
                samples = await asyncio.to_thread(scrape, port)
            except OSError:
                return False  # not listening yet
            return (
                get(samples, "learnloop_events_in_total", topic=topics.feedback) == produced
                and sum(matching(samples, "learnloop_learner_events", learner="sea").values()) == len(events)
                and get(samples, "learnloop_events_in_total", topic=topics.drift) == len(ref.drifts)
            )

        await wait_for(counted, timeout=120, every=0.2, what="every event counted and snapshotted")
        [status] = cli_json(env, "learners", "--json")
        # The feedback worker's own families, no zero series of the conversation worker's or the trainer's.
        assert await asyncio.to_thread(learnloop_families, port) == FAMILIES[FeedbackMetrics]
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]

    assert get(samples, "learnloop_events_learned_total", learner="sea") == len(events)
    assert get(samples, "learnloop_events_deadlettered_total", topic=topics.feedback, reason="invalid_json") == 3
    assert get(samples, "learnloop_events_deadlettered_total", topic=topics.feedback, reason="validation") == 2
    assert get(samples, "learnloop_duplicates_dropped_total", topic=topics.feedback) == 4
    assert get(samples, "learnloop_events_in_total", topic=topics.predictions) == 2
    assert get(samples, "learnloop_events_deadlettered_total", topic=topics.predictions, reason="invalid_json") == 1
    # "{}" names no schema at all: the wire contract refuses it before any field is read.
    assert get(samples, "learnloop_events_deadlettered_total", topic=topics.predictions, reason="unknown_schema") == 1
    assert get(samples, "learnloop_drift_alarms_total", learner="sea") == len(ref.drifts) == status["drifts"]

    # The learner gauges are the statuses of the same snapshot, and equal River run in-process.
    [(labels, n_learned)] = matching(samples, "learnloop_learner_events", learner="sea").items()
    partition = dict(labels)["partition"]
    assert n_learned == status["n_learned"] == ref.n
    gauges = {dict(lab)["metric"]: v for lab, v in matching(samples, "learnloop_learner_metric", learner="sea").items()}
    assert gauges == status["metrics"]
    assert gauges["accuracy"] == pytest.approx(ref.accuracy, abs=1e-12)
    assert gauges["f1"] == pytest.approx(ref.f1, abs=1e-12)
    assert gauges["log_loss"] == pytest.approx(ref.log_loss, abs=1e-9)

    assert (get(samples, "learnloop_snapshots_total") or 0) >= 1
    age = get(samples, "learnloop_snapshot_age_seconds", topic=topics.feedback, partition=partition)
    assert age is not None and 0 <= age < 60
    assert (get(samples, "learnloop_batch_seconds_count", loop="feedback") or 0) >= 1
    assert (get(samples, "learnloop_learn_seconds_count") or 0) >= 1
