"""Fine-tuning jobs over HTTP: submit, follow, list and cancel (scopes ``jobs:write`` and ``jobs:read``).

Jobs live in the SQL store the trainer claims them from (``workers.store.jobs``), so a job
submitted here is one ``learnloop jobs`` lists and ``learnloop worker trainer`` runs. A job
submitted while the model already has a queued one joins it (as a retrain request would),
unless it brings other parameters: that is 409. ``DELETE`` cancels: a queued job never
starts; a running one stops at its trainer's next heartbeat and registers nothing.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from schemas import DataWindow, RetrainRequest
from schemas.envelope import NAME_PATTERN
from workers.api.auth import Principal, require
from workers.api.deps import Gateway, GatewayDep
from workers.store.jobs import JobNotFound, JobStateError, JobStore, job_as_dict
from workers.store.models import JobStatus

JobsReader = Annotated[Principal, Depends(require("jobs:read"))]
JobsWriter = Annotated[Principal, Depends(require("jobs:write"))]
JobId = Annotated[str, PathParam(min_length=1, max_length=36)]


class JobParams(BaseModel):
    """The fine-tuning settings a job may override (``training.*``); the rest stay the trainer's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int | None = Field(default=None, ge=1, le=100)
    max_steps: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0, lt=1)
    batch_size: int | None = Field(default=None, ge=1, le=1024)
    grad_accum: int | None = Field(default=None, ge=1, le=1024)
    max_length: int | None = Field(default=None, ge=8, le=4096)
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    weight_decay: float | None = Field(default=None, ge=0)
    lora_r: int | None = Field(default=None, ge=1, le=256)
    lora_alpha: int | None = Field(default=None, ge=1)
    lora_dropout: float | None = Field(default=None, ge=0, lt=1)
    patience: int | None = Field(default=None, ge=0)
    eval_every_steps: int | None = Field(default=None, ge=1)
    seed: int | None = None


class JobSubmission(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(pattern=NAME_PATTERN, max_length=128, description="the registered model to train")
    kind: Literal["classifier"] = Field(default="classifier", description="what is fine-tuned")
    learner: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=128,
                                description="train on this learner's samples alone (default: every learner "
                                            "whose retrain_model is the model)")
    last_n: int | None = Field(default=None, ge=1, description="the newest samples to train on")
    params: JobParams = Field(default_factory=JobParams)


def _jobs(gateway: Gateway) -> JobStore:
    if gateway.jobs is None:
        from workers.store.migrate import migrated_engine

        settings = gateway.settings
        gateway.jobs = JobStore(migrated_engine(settings.database, settings.data_dir))
    jobs: JobStore = gateway.jobs
    return jobs


def _learners(gateway: Gateway, model: str, learner: str | None) -> list[str]:
    if learner is not None:
        return [learner]
    declared = gateway.settings.load_learners()
    # As the trainer decides (workers.trainer.pipeline.trainable_learners): those naming the model.
    return [n for n in declared.declared if declared.learners[n].retrain_model == model]


def jobs_router() -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.post("", status_code=status.HTTP_201_CREATED, summary="Submit a fine-tuning job")
    async def submit(body: JobSubmission, gateway: GatewayDep, caller: JobsWriter) -> dict[str, Any]:
        params = body.params.model_dump(exclude_none=True)
        req = RetrainRequest(request_id=uuid.uuid4(), model=body.model, reason="manual", learner=body.learner,
                             window=DataWindow(last_n=body.last_n), source=caller.name)

        def submit_job() -> tuple[dict[str, Any], bool]:
            job, created = _jobs(gateway).request(req, learners=_learners(gateway, body.model, body.learner),
                                                  params=params)
            return job_as_dict(job), created

        try:
            job, created = await run_in_threadpool(submit_job)
        except JobStateError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
        return {**job, "created": created}

    @router.get("", summary="List jobs, newest first")
    async def listing(
        gateway: GatewayDep,
        _: JobsReader,
        status_: Annotated[JobStatus | None, Query(alias="status")] = None,
        model: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[dict[str, Any]]:
        found = await run_in_threadpool(lambda: _jobs(gateway).list(limit, model=model, status=status_))
        return [job_as_dict(j) for j in found]

    @router.get("/{job_id}", summary="A job's status and progress")
    async def one(job_id: JobId, gateway: GatewayDep, _: JobsReader) -> dict[str, Any]:
        job = await run_in_threadpool(lambda: _jobs(gateway).get(job_id))
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id}")
        return job_as_dict(job)

    @router.delete("/{job_id}", summary="Cancel a queued or running job")
    async def cancel(job_id: JobId, gateway: GatewayDep, _: JobsWriter) -> dict[str, Any]:
        try:
            job = await run_in_threadpool(lambda: _jobs(gateway).cancel(job_id))
        except JobNotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id}") from None
        except JobStateError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
        return job_as_dict(job)

    return router
