"""The end-to-end run of the training benchmark: a drift event through `learnloop worker trainer` to a ModelUpdate.

Part of ``bench.training`` (``.venv/bin/python -m bench.training``); bench/README.md says what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.training_data import Result, tickets
from bench.training_worker import TrainerProcess, first_at, log_times, wait_ready, worker_env
from learners.evaluation import LATENCY_SAMPLES
from schemas import DataWindow, DriftEvent, ModelUpdate, RetrainRequest, WindowStats, parse_event
from streams.admin import ensure_topics
from streams.config import KafkaConfig
from streams.derived import derived_id
from streams.producer import EventProducer
from streams.topics import Topics
from workers.stack.embedded import EmbeddedBroker
from workers.store.engine import make_engine
from workers.store.feedback import FeedbackStore
from workers.store.jobs import JobStore, job_as_dict
from workers.store.migrate import upgrade
from workers.store.samples import SampleIn

# --- (2) end to end: DriftEvent + RetrainRequest → `learnloop worker trainer` → ModelUpdate ------------------------

LEARNER, MODEL = "tickets", "tickets-text"
LEARNERS = f'[learners.{LEARNER}]\ntask = "binary"\nmodel = "logistic_regression"\nretrain_model = "{MODEL}"\n'


def samples_for(texts: list[str], labels: list[bool]) -> list[SampleIn]:
    t0 = datetime.now(UTC) - timedelta(seconds=len(texts))
    return [
        SampleIn(
            event_id=str(uuid.uuid4()),
            learner=LEARNER,
            text=t,
            label=y,
            source="bench",
            occurred_at=t0 + timedelta(seconds=i),
        )
        for i, (t, y) in enumerate(zip(texts, labels, strict=True))
    ]


def drift_and_retrain(n_seen: int) -> tuple[DriftEvent, RetrainRequest]:
    """The pair the feedback worker emits when ADWIN fires (streams/feedback.py, ``_drift_events``)."""
    run = uuid.uuid4().hex  # derived ids, unique per benchmark run
    drift = DriftEvent(
        event_id=derived_id("drift", LEARNER, n_seen, run),
        source="bench",
        learner=LEARNER,
        detector="adwin",
        metric="error",
        n_seen=n_seen,
        before=WindowStats(n=n_seen - n_seen // 5, mean=0.08),
        after=WindowStats(n=n_seen // 5, mean=0.41),
        detected_at=datetime.now(UTC),
        delta=0.002,
    )
    retrain = RetrainRequest(
        event_id=derived_id("retrain", LEARNER, n_seen, run),
        request_id=derived_id("retrain-request", LEARNER, n_seen, run),
        source="bench",
        model=MODEL,
        reason="drift",
        learner=LEARNER,
        drift_event_id=drift.event_id,
        window=DataWindow(),
    )
    return drift, retrain


def heartbeat_rates(seen: Sequence[tuple[float, str, int | None]], batch_size: int) -> list[float]:
    """Training samples/s between consecutive "train" heartbeats (no validation pass in between), sorted."""
    rates = []
    for (t1, s1, k1), (t2, s2, k2) in itertools.pairwise(seen):
        if s1 == s2 == "train" and k1 is not None and k2 is not None and k2 > k1 and t2 > t1:
            rates.append(round((k2 - k1) * batch_size / (t2 - t1), 1))
    return sorted(rates)


@dataclass
class Watch:
    """What the benchmark sees of the job while it waits: each new progress heartbeat, with the trainer's time."""

    seen: list[tuple[float, str, int | None]] = field(default_factory=list)  # (heartbeat_at, stage, step)
    job: Result | None = None

    def poll(self, jobs: JobStore) -> None:
        found = jobs.list(limit=1, model=MODEL)
        if not found:
            return
        self.job = job_as_dict(found[0])
        p, hb = found[0].progress, found[0].heartbeat_at
        if p and hb is not None:
            key = (hb.timestamp(), str(p.get("stage")), p.get("step"))
            if not self.seen or self.seen[-1] != key:
                self.seen.append(key)

    def stage_at(self, stage: str) -> float | None:
        return next((t for t, s, _ in self.seen if s == stage), None)


async def end_to_end(args: argparse.Namespace, broker: EmbeddedBroker, tmp: Path) -> Result:
    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"benchtrain{uuid.uuid4().hex[:10]}.")
    topics = Topics(kafka.topic_prefix)
    await ensure_topics(kafka, topics.all())
    (tmp / "learners.toml").write_text(LEARNERS)
    url = f"sqlite:///{tmp / 'store.db'}"
    upgrade(url)
    engine = make_engine(url)
    jobs = JobStore(engine)
    FeedbackStore(engine).add_many(samples_for(*tickets(args.samples, "mixed", seed=13)))
    env = worker_env(kafka, tmp, args)
    updates = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await updates.start()
    watch = Watch()
    try:
        parts = updates.partitions_for_topic(topics.model_updates)
        for _ in range(100):
            if parts:
                break
            await updates._client.force_metadata_update()  # the topic was just created
            parts = updates.partitions_for_topic(topics.model_updates)
        tps = [TopicPartition(topics.model_updates, p) for p in sorted(parts)]
        updates.assign(tps)
        await updates.seek_to_beginning(*tps)
        async with EventProducer(kafka) as producer:
            with TrainerProcess(env, tmp) as trainer:
                ready = await wait_ready(trainer)
                drift, retrain = drift_and_retrain(args.samples)
                cpu0, load0 = trainer.cpu_s(), os.getloadavg()[0]
                t0 = time.time()
                await producer.send_many([drift, retrain])
                t_acked = time.time()
                record: Any = None
                deadline, last_poll = time.monotonic() + args.e2e_timeout, 0.0
                while record is None:
                    got = await updates.getmany(timeout_ms=50)
                    record = next((r for rs in got.values() for r in rs), None)
                    if record is None and time.monotonic() - last_poll >= 0.1:
                        watch.poll(jobs)
                        last_poll = time.monotonic()
                        failed = watch.job is not None and watch.job["status"] in ("failed", "rejected")
                        if failed or not trainer.alive() or time.monotonic() > deadline:
                            why = watch.job["error"] if failed and watch.job else "no ModelUpdate in time"
                            raise RuntimeError(f"{why}\n{trainer.tail()}")
                t_update = time.time()
                cpu1, load1 = trainer.cpu_s(), os.getloadavg()[0]
                peak_mb = trainer.peak_rss_mb()
                while watch.job is None or watch.job["status"] == "running":  # succeed() runs after announce()
                    await asyncio.sleep(0.05)
                    watch.poll(jobs)
                    if time.time() - t_update > 60:
                        break
    finally:
        await updates.stop()
        engine.dispose()
    update = parse_event(record.value, ModelUpdate)
    assert isinstance(update, ModelUpdate)
    job = watch.job or {}
    out = breakdown(
        trainer, watch, job, update, record.timestamp / 1000, t0=t0, t_acked=t_acked, ready=ready, t_update=t_update
    )
    overrides = {k.removeprefix("LEARNLOOP_"): v for k, v in env.items() if k.startswith("LEARNLOOP_TRAINING__")}
    out["training_overrides"] = overrides
    if cpu0 is not None and cpu1 is not None:
        out["trainer_cpu_s"] = round(cpu1 - cpu0, 1)
        out["trainer_cpu_per_wall"] = round((cpu1 - cpu0) / (t_update - t0), 2)
    out["load"] = [round(load0, 2), round(load1, 2)]
    out["trainer_peak_rss_mb"] = round(peak_mb) if peak_mb is not None else None
    rates = heartbeat_rates(watch.seen, args.batch_size)
    if rates:
        out["train_rate_between_heartbeats"] = {"min": rates[0], "p50": rates[len(rates) // 2], "max": rates[-1]}
    p50 = ((out["result"].get("metrics") or {}).get("latency_p50_ms")) or 0.0
    n_test = round(out["dataset"]["n_samples"] * 0.15) if out["dataset"]["n_samples"] else 0
    out["stages"]["latency_calls_est"] = round(min(LATENCY_SAMPLES, n_test) * p50 / 1000, 1)
    changed = ", ".join(f"{k.split('__')[1].lower()}={v}" for k, v in overrides.items())
    out["settings"] = f" except {changed}" if changed else ""
    return out


def breakdown(
    trainer: TrainerProcess,
    watch: Watch,
    job: Result,
    update: ModelUpdate,
    t_sent: float,
    *,
    t0: float,
    t_acked: float,
    ready: float,
    t_update: float,
) -> Result:
    lines = log_times(trainer.log)
    start = trainer.started

    def iso(key: str) -> float | None:
        return datetime.fromisoformat(job[key]).timestamp() if job.get(key) else None

    def span(a: float | None, b: float | None) -> float | None:
        return round(b - a, 2) if a is not None and b is not None else None

    worker_starting = first_at(lines, "[^Worker]: Starting", start - 1)
    joining, joined = first_at(lines, "(Re-)joining group", start - 1), first_at(lines, "Joined group", start - 1)
    created, started, finished = iso("created_at"), iso("started_at"), iso("finished_at")
    result = job.get("result") or {}
    jid = job.get("id", "?")
    data_done = next((t for t, m in lines if f"job {jid}: " in m and " samples (" in m), None)
    fine_tuned = first_at(lines, "fine-tuned ", t0)
    evaluate, register = watch.stage_at("evaluate"), watch.stage_at("register")
    n_train = (result.get("dataset") or {}).get("n_samples")
    loop_s = None
    if result.get("train_samples_per_s") and n_train:
        frac = 1 - 0.15 - 0.15  # the trainer's default split: 70 % trains
        loop_s = round(round(n_train * frac) * result["epochs_run"] / result["train_samples_per_s"], 1)
    training = span(data_done, evaluate or fine_tuned)
    return {
        "startup": {
            "ready_s": round(ready - start, 2),
            "to_worker_start_s": span(start, worker_starting),
            "faust_start_s": span(worker_starting, joining),
            "group_join_s": span(joining, joined),
            "after_join_s": span(joined, ready),
        },
        "drift_to_update_s": round(t_update - t0, 2),
        "produce_ack_s": round(t_acked - t0, 3),
        "stages": {
            "intake": span(t0, created),
            "claim": span(created, started),
            "dataset": span(started, data_done),
            "training": training,
            "training_loop_est": loop_s,
            "training_other": round(training - loop_s, 1) if training is not None and loop_s is not None else None,
            "evaluation": span(evaluate, register),
            "registration": span(register, t_sent),
            "delivery": span(t_sent, t_update),
            "succeed_after_update": span(t_update, finished),
        },
        "heartbeats": [(round(t - t0, 2), s, step) for t, s, step in watch.seen],
        "job": {k: job.get(k) for k in ("id", "status", "reason", "drift_event_ids", "attempts")},
        "result": {
            k: result.get(k)
            for k in (
                "version",
                "alias",
                "promoted",
                "grade",
                "metrics",
                "device",
                "epochs_run",
                "train_samples_per_s",
                "duration_s",
                "steps",
                "stopped_by",
                "warm_start",
                "n_eval",
            )
        },
        # The trainer's own clock per stage (startup, dataset, training, evaluation, registration, announce).
        "job_stages_s": result.get("timings_s"),
        "dataset": {
            k: (result.get("dataset") or {}).get(k)
            for k in ("n_input", "n_samples", "n_duplicates_dropped", "classes", "text_length")
        },
        "update": {
            "model": update.model,
            "version": update.version,
            "alias": update.alias,
            "uri": update.uri,
            "n_samples": update.lineage.n_samples,
        },
        "trainer_exit_code": trainer.exit_code,
        "trainer_stop_s": round(trainer.stop_s, 2),
    }
