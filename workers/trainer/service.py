"""`learnloop worker trainer`: retrain requests in, jobs run one at a time, model updates out.

Intake is a Faust agent on ``learnloop.retrain`` (a low-volume topic): each
request is recorded in SQL, where a burst for one model coalesces into the
queued job. The runner claims settled jobs, runs them in a thread (torch
releases the GIL) with a heartbeat, and announces each registered version on
``learnloop.model-updates``. On start it requeues (or fails, after too many
attempts) jobs whose trainer died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from learners.config import LearnersConfig
from learners.finetune import TrainingCancelled
from schemas import ModelUpdate, RetrainRequest
from streams.metrics import TrainerMetrics, trainer_metrics
from streams.producer import EventProducer
from workers.store.datasets import DatasetInvalid
from workers.store.jobs import DATASET_INVALID_PREFIX, JobStateError, JobStore, job_outcome
from workers.store.models import TrainingJob, TrainingOutcome
from workers.trainer.config import TrainerConfig
from workers.trainer.pipeline import TrainingPipeline, trainable_learners

log = logging.getLogger(__name__)


class CancelPoll:
    """Whether a job was cancelled on request, read from the store at most every ``every_s``.

    Training polls it every batch: a step costs far more than one read a second, and the
    run stops at the next step rather than at its next progress report.
    """

    def __init__(self, jobs: JobStore, job_id: str, *, every_s: float = 1.0) -> None:
        self.jobs, self.job_id, self.every_s = jobs, job_id, every_s
        self.cancelled = False
        self._next = time.monotonic() + every_s

    def __call__(self) -> bool:
        if not self.cancelled and time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every_s
            job = self.jobs.get(self.job_id)
            self.cancelled = job is not None and job.status == "cancelled"
        return self.cancelled


class Trainer:
    def __init__(
        self,
        *,
        jobs: JobStore,
        pipeline: TrainingPipeline,
        producer: EventProducer,
        learners: LearnersConfig,
        config: TrainerConfig,
        worker_id: str | None = None,
        metrics: TrainerMetrics | None = None,
        learners_file: Path | None = None,
    ) -> None:
        self.jobs = jobs
        self.pipeline = pipeline
        self.producer = producer
        self.learners = learners
        self.learners_file = learners_file
        self.config = config
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = metrics or trainer_metrics()
        self._stopping = asyncio.Event()
        self.completed: list[str] = []

    # -- intake ------------------------------------------------------------------

    def learners_for(self, req: RetrainRequest) -> list[str]:
        """Whose samples train ``req.model``: every learner naming it as retrain_model, or the one asked for.

        A manual request that names a learner (``learnloop retrain M --learner L``) trains on that
        learner alone; a drift request also brings its learner, in case this trainer's learners
        file lags behind the feedback worker's.
        """
        declared = [(name, self.learners.learners[name].retrain_model) for name in self.learners.declared]
        learners = trainable_learners(req.model, declared)
        if req.learner and req.reason == "manual":
            return [req.learner]
        if req.learner and req.learner not in learners:
            learners.append(req.learner)
        return learners

    def intake(self, req: RetrainRequest) -> TrainingJob:
        job, created = self.jobs.request(req, learners=self.learners_for(req))
        log.info(
            "%s retrain request %s for %s (%s) %s job %s",
            "new" if created else "coalesced", req.request_id, req.model, req.reason,
            "→" if created else "into", job.id,
        )
        if created and not job.learners:
            # Retrying cannot help until the learners file changes: reject now rather than fail later.
            where = f"learners file {self.learners_file}" if self.learners_file else "learners file"
            reason = (
                f"no learner in the trainer's {where} names retrain_model {req.model!r}: set "
                "LEARNLOOP_LEARNERS_FILE to the file the feedback worker uses"
            )
            job = self.jobs.reject(job.id, reason)
            self.metrics.training_jobs.labels(job.model, TrainingOutcome.REJECTED).inc()
            log.error("job %s rejected: %s", job.id, reason)
        return job

    # -- runner ------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        last_recovery = -math.inf
        while not self._stopping.is_set():
            if time.monotonic() - last_recovery >= self.config.stale_after_s / 2:
                await self.recover()
                last_recovery = time.monotonic()
            job = await asyncio.to_thread(self._claim)
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.config.poll_s)
                continue
            await self.run_job(job)

    async def recover(self) -> None:
        """Requeue (or fail, after too many attempts) jobs whose trainer stopped heart-beating."""
        recovered = await asyncio.to_thread(
            self.jobs.recover_stale, stale_after_s=self.config.stale_after_s, max_attempts=self.config.max_attempts
        )
        for stale in recovered:
            log.warning("job %s of %s was left running by a dead trainer: now %s", stale.id, stale.model, stale.status)
            if job_outcome(stale) is TrainingOutcome.FAILED:  # its attempts are used up: nobody runs it again
                self.metrics.training_jobs.labels(stale.model, TrainingOutcome.FAILED).inc()

    def _claim(self) -> TrainingJob | None:
        return self.jobs.claim_next(self.worker_id, settle_s=self.config.settle_s)

    async def run_job(self, job: TrainingJob) -> None:
        t0 = time.monotonic()
        outcome = await self._run_job(job)
        self.metrics.training_jobs.labels(job.model, outcome).inc()
        self.metrics.training_job_seconds.labels(job.model).observe(time.monotonic() - t0)

    async def _run_job(self, job: TrainingJob) -> TrainingOutcome:
        """Run one job to its end, or the end of this run (cancelled, lost)."""
        log.info("job %s: training %s (attempt %d)", job.id, job.model, job.attempts)

        def progress(p: dict[str, Any]) -> None:
            self.jobs.heartbeat(job.id, {k: v for k, v in p.items() if k != "history"}, worker_id=self.worker_id)

        cancel = CancelPoll(self.jobs, job.id)

        def should_stop() -> bool:
            return self._stopping.is_set() or cancel()

        try:
            outcome = await asyncio.to_thread(self.pipeline.run, job, progress=progress, should_stop=should_stop)
        except DatasetInvalid as exc:
            error = f"{DATASET_INVALID_PREFIX}{exc}"
            await asyncio.to_thread(self.jobs.fail, job.id, error, worker_id=self.worker_id)
            log.error("job %s failed: %s", job.id, error)
            return TrainingOutcome.DATASET_INVALID
        except TrainingCancelled:
            if cancel.cancelled:
                log.warning("job %s cancelled on request: stopped, nothing registered", job.id)
                return TrainingOutcome.CANCELLED
            log.warning("job %s interrupted by shutdown; the next trainer picks it up again", job.id)
            return TrainingOutcome.CANCELLED
        except JobStateError as exc:  # our heartbeat was refused: cancelled on request, or recovered as stale
            if exc.status == "cancelled":
                log.warning("job %s cancelled on request: stopped, nothing registered", job.id)
                return TrainingOutcome.CANCELLED
            log.error("job %s is no longer ours (%s); dropping this run", job.id, exc)
            return TrainingOutcome.LOST
        except Exception as exc:  # a failed job must be recorded, whatever broke; the worker carries on
            reason = f"{type(exc).__name__}: {exc}"
            log.error("job %s failed: %s\n%s", job.id, reason, traceback.format_exc())
            await asyncio.to_thread(self.jobs.fail, job.id, reason[:4000], worker_id=self.worker_id)
            return TrainingOutcome.FAILED
        t_announce = time.monotonic()
        await self.announce(outcome.update)
        timings = {**outcome.result.get("timings_s", {}), "announce": round(time.monotonic() - t_announce, 3)}
        outcome.result["timings_s"] = timings
        for stage, seconds in timings.items():
            self.metrics.training_stage_seconds.labels(job.model, stage).observe(seconds)
        log.info("job %s stages: %s", job.id, ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
        await asyncio.to_thread(self.jobs.succeed, job.id, outcome.result, worker_id=self.worker_id)
        self.completed.append(job.id)
        return TrainingOutcome.SUCCEEDED

    async def announce(self, update: ModelUpdate) -> None:
        await self.producer.send(update)
        await self.producer.flush()
        if update.version.isdecimal():  # registry versions are numbers; anything else has no gauge value
            self.metrics.model_version.labels(update.model, update.alias).set(int(update.version))
        log.info("announced %s version %s as %s", update.model, update.version, update.alias)
