"""Training job records on real engines: coalescing, atomic claims, guarded transitions, recovery.

Same databases as test_store_feedback.py: a SQLite file, and PostgreSQL
(``LEARNLOOP_TEST_POSTGRES_URL``, a schema per test) when reachable.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from schemas import DataWindow, RetrainRequest
from workers.store import jobs as jobs_module
from workers.store.engine import make_engine
from workers.store.jobs import JobNotFound, JobStateError, JobStore, TrainingJob, job_as_dict, job_window

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jobs(engine: Engine, clock: Clock) -> JobStore:
    return JobStore(engine, clock=clock)


def req(model: str = "sentiment-text", **kw: object) -> RetrainRequest:
    return RetrainRequest(source="test", model=model, reason=kw.pop("reason", "drift"), **kw)  # type: ignore[arg-type]


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


# -- requests -------------------------------------------------------------------------


def test_a_burst_of_requests_is_one_job(jobs: JobStore, clock: Clock) -> None:
    burst = [req(drift_event_id=uuid.uuid4(), window=DataWindow(end=at(i))) for i in range(20)]
    results = []
    for i, r in enumerate(burst):
        clock.advance(1)
        results.append(jobs.request(r, learners=["sentiment"] if i % 2 else ["sentiment", "sentiment-b"]))
    assert [created for _, created in results] == [True] + [False] * 19
    assert len({job.id for job, _ in results}) == 1
    job = jobs.get(results[0][0].id)
    assert job is not None and job.status == "queued" and job.reason == "drift" and job.attempts == 0
    assert job.request_ids == [str(r.request_id) for r in burst]
    assert job.drift_event_ids == [str(r.drift_event_id) for r in burst]
    assert job.learners == ["sentiment", "sentiment-b"]
    assert job_window(job) == DataWindow(end=at(19))  # the widest window any request asked for
    assert job.created_at == T0 + timedelta(seconds=1) and job.requested_at == T0 + timedelta(seconds=20)
    assert [j.id for j in jobs.list()] == [job.id]


def test_the_same_request_twice_changes_nothing(jobs: JobStore, clock: Clock) -> None:
    r = req(window=DataWindow(last_n=100))
    job, created = jobs.request(r, learners=["sentiment"])
    clock.advance(60)
    _, created_again = jobs.request(r, learners=["other"])
    assert (created, created_again) == (True, False)
    after = jobs.get(job.id)
    assert after is not None and job_as_dict(after) == job_as_dict(job)
    # redelivered after the job started: still the same job, no new one
    claimed = jobs.claim_next("w1")
    assert claimed is not None and claimed.id == job.id
    third, created_third = jobs.request(r, learners=["sentiment"])
    assert (third.id, third.status, created_third) == (job.id, "running", False)
    assert len(jobs.list()) == 1


def test_a_request_while_the_job_runs_queues_the_next_job(jobs: JobStore) -> None:
    first, _ = jobs.request(req(), learners=["sentiment"])
    assert jobs.claim_next("w1") is not None
    second, created = jobs.request(req(), learners=["sentiment"])
    assert created and second.id != first.id and second.status == "queued"
    other, created_other = jobs.request(req("another-model"), learners=["x"])
    assert created_other and other.id != second.id
    assert {j.model for j in jobs.list(model="sentiment-text")} == {"sentiment-text"}
    assert len(jobs.list(model="sentiment-text")) == 2 and len(jobs.list(limit=1)) == 1


def test_concurrent_requests_from_several_processes_still_make_one_job(db_url: str) -> None:
    engines = [make_engine(db_url) for _ in range(4)]
    stores = [JobStore(e) for e in engines]
    results: list[tuple[TrainingJob, bool]] = []
    lock = threading.Lock()

    def send(store: JobStore) -> None:
        for _ in range(5):
            out = store.request(req(), learners=["sentiment"])
            with lock:
                results.append(out)

    try:
        run_together([lambda s=s: send(s) for s in stores])  # type: ignore[misc]
        assert sum(created for _, created in results) == 1
        (job,) = stores[0].list()
        assert len(job.request_ids) == 20
    finally:
        for e in engines:
            e.dispose()


# -- claiming -------------------------------------------------------------------------


def test_claim_takes_the_oldest_settled_job(jobs: JobStore, clock: Clock) -> None:
    old, _ = jobs.request(req("m1"), learners=["a"])
    clock.advance(5)
    new, _ = jobs.request(req("m2"), learners=["b"])
    clock.advance(5)
    jobs.request(req("m1"), learners=["a"])  # m1's burst goes on: it is not settled
    assert jobs.claim_next("w1", settle_s=8) is None
    clock.advance(4)
    got = jobs.claim_next("w1", settle_s=8)
    assert got is not None and got.id == new.id
    clock.advance(5)
    got = jobs.claim_next("w1", settle_s=8)
    assert got is not None and got.id == old.id
    assert (got.status, got.worker_id, got.attempts) == ("running", "w1", 1)
    assert got.started_at == got.heartbeat_at == clock.now
    assert jobs.claim_next("w1") is None


def run_together(fns: list[Callable[[], None]]) -> None:
    """Start every function at the same moment in its own thread; re-raise the first error."""
    barrier = threading.Barrier(len(fns))
    errors: list[BaseException] = []

    def go(fn: Callable[[], None]) -> None:
        try:
            barrier.wait()
            fn()
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("n_jobs", [1, 12])
def test_concurrent_claimers_never_share_a_job(db_url: str, n_jobs: int) -> None:
    engines = [make_engine(db_url) for _ in range(4)]
    stores = [JobStore(e) for e in engines]
    for i in range(n_jobs):
        stores[0].request(req(f"model-{i}"), learners=["x"])
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(store: JobStore, worker: str) -> None:
        while (job := store.claim_next(worker)) is not None:
            with lock:
                claimed.append((job.id, worker))

    try:
        run_together([lambda s=s, w=f"w{i}": claimer(s, w) for i, s in enumerate(stores)])  # type: ignore[misc]
        assert len(claimed) == n_jobs
        assert len({job_id for job_id, _ in claimed}) == n_jobs
        for job_id, worker in claimed:
            job = stores[0].get(job_id)
            assert job is not None and (job.status, job.worker_id, job.attempts) == ("running", worker, 1)
    finally:
        for e in engines:
            e.dispose()


# -- transitions ----------------------------------------------------------------------


def running(jobs: JobStore, worker: str = "w1") -> TrainingJob:
    jobs.request(req(), learners=["sentiment"])
    job = jobs.claim_next(worker)
    assert job is not None
    return job


def test_a_job_reports_progress_and_succeeds(jobs: JobStore, clock: Clock) -> None:
    job = running(jobs)
    clock.advance(30)
    beat = jobs.heartbeat(job.id, {"stage": "training", "epoch": 1, "step": 40, "loss": 0.31}, worker_id="w1")
    assert beat.heartbeat_at == clock.now and beat.progress == {"stage": "training", "epoch": 1, "step": 40,
                                                                 "loss": 0.31}  # fmt: skip
    clock.advance(30)
    result = {"metrics": {"f1": 0.91}, "version": "8", "alias": "challenger", "grade": "better"}
    done = jobs.succeed(job.id, result, worker_id="w1")
    assert (done.status, done.result, done.finished_at, done.error) == ("succeeded", result, clock.now, None)
    as_json = json.loads(json.dumps(job_as_dict(done)))
    assert as_json["status"] == "succeeded" and as_json["finished_at"] == clock.now.isoformat()
    assert as_json["progress"]["loss"] == 0.31


@pytest.mark.parametrize("action", ["succeed", "heartbeat"])
def test_only_a_running_job_can_succeed_or_beat(jobs: JobStore, action: str) -> None:
    queued, _ = jobs.request(req(), learners=["sentiment"])
    call = {"succeed": lambda: jobs.succeed(queued.id, {}), "heartbeat": lambda: jobs.heartbeat(queued.id, {})}
    with pytest.raises(JobStateError, match=f"cannot {action} job .*: it is queued, not running") as info:
        call[action]()
    assert info.value.status == "queued"
    stored = jobs.get(queued.id)
    assert stored is not None and stored.status == "queued" and stored.result is None


def test_finished_jobs_stay_finished(jobs: JobStore) -> None:
    job = running(jobs)
    jobs.fail(job.id, "dataset invalid: only 37 samples (need 200)")
    attempts: list[Callable[[], TrainingJob]] = [
        lambda: jobs.succeed(job.id, {}),
        lambda: jobs.fail(job.id, "x"),
        lambda: jobs.reject(job.id, "x"),
    ]
    for attempt in attempts:
        with pytest.raises(JobStateError, match="it is failed"):
            attempt()
    final = jobs.get(job.id)
    assert final is not None and final.status == "failed"
    assert final.error == "dataset invalid: only 37 samples (need 200)"


def test_reject_a_queued_job(jobs: JobStore) -> None:
    job, _ = jobs.request(req(), learners=[])
    rejected = jobs.reject(job.id, "model 'sentiment-text' is not trainable (no base model configured)")
    assert rejected.status == "rejected" and rejected.error is not None and "not trainable" in rejected.error
    assert jobs.claim_next("w1") is None
    _, created = jobs.request(req(), learners=[])
    assert created  # a rejected job takes no more requests


def test_a_cancelled_job_never_starts_and_a_running_one_loses_its_next_heartbeat(jobs: JobStore) -> None:
    queued, _ = jobs.request(req(model="a-text"), learners=["a"])
    assert jobs.cancel(queued.id).status == "cancelled"
    assert jobs.claim_next("w1") is None  # a cancelled job is not claimable
    job = running(jobs)
    cancelled = jobs.cancel(job.id)
    assert (cancelled.status, cancelled.error, job_as_dict(cancelled)["outcome"]) == (
        "cancelled", "cancelled on request", "cancelled")
    with pytest.raises(JobStateError, match="it is cancelled") as info:
        jobs.heartbeat(job.id, {"stage": "train"}, worker_id="w1")
    assert info.value.status == "cancelled"  # what tells the trainer to stop without registering
    with pytest.raises(JobStateError, match="it is cancelled"):
        jobs.cancel(job.id)
    assert {j.id for j in jobs.list(status="cancelled")} == {job.id, queued.id}


def test_params_go_to_a_new_job_and_other_params_do_not_join_it(jobs: JobStore) -> None:
    job, created = jobs.request(req(reason="manual"), learners=["s"], params={"epochs": 1})
    assert created and job.params == {"epochs": 1} and job.kind == "classifier"
    same, created = jobs.request(req(reason="manual"), learners=["s"], params={"epochs": 1})
    assert not created and same.id == job.id
    with pytest.raises(JobStateError, match="already queued with other parameters"):
        jobs.request(req(reason="manual"), learners=["s"], params={"epochs": 2})


def test_unknown_jobs(jobs: JobStore) -> None:
    assert jobs.get("nope") is None
    with pytest.raises(JobNotFound, match="no training job 'nope'"):
        jobs.succeed("nope", {})


def test_a_worker_cannot_move_a_job_it_does_not_hold(jobs: JobStore) -> None:
    job = running(jobs, "w1")
    with pytest.raises(JobStateError, match="held by worker 'w1', not 'w2'"):
        jobs.heartbeat(job.id, {}, worker_id="w2")
    with pytest.raises(JobStateError):
        jobs.succeed(job.id, {"version": "9"}, worker_id="w2")
    current = jobs.get(job.id)
    assert current is not None and current.status == "running"


# -- recovery -------------------------------------------------------------------------


def test_a_silent_job_is_requeued_then_failed_after_max_attempts(jobs: JobStore, clock: Clock) -> None:
    job = running(jobs, "w1")
    clock.advance(100)
    assert jobs.recover_stale(stale_after_s=120) == []
    clock.advance(50)
    (recovered,) = jobs.recover_stale(stale_after_s=120)
    assert (recovered.id, recovered.status, recovered.worker_id, recovered.attempts) == (job.id, "queued", None, 1)
    assert recovered.error == "trainer stopped while running (no heartbeat for 150 s) on attempt 1; requeued"
    # the stalled worker wakes up: its job is gone, it must not register anything
    with pytest.raises(JobStateError):
        jobs.heartbeat(job.id, {"stage": "training"}, worker_id="w1")
    for attempt in (2, 3):
        again = jobs.claim_next(f"w{attempt}")
        assert again is not None and again.id == job.id and again.attempts == attempt
        clock.advance(200)
        (recovered,) = jobs.recover_stale(stale_after_s=120, max_attempts=3)
    assert recovered.status == "failed" and recovered.finished_at == clock.now
    assert recovered.error == "trainer stopped while running (no heartbeat for 200 s) after 3 attempts"
    assert jobs.claim_next("w4") is None
    with pytest.raises(JobStateError):
        jobs.succeed(job.id, {"version": "9"}, worker_id="w3")


def test_a_beating_job_is_left_alone(jobs: JobStore, clock: Clock) -> None:
    job = running(jobs)
    for _ in range(5):
        clock.advance(60)
        jobs.heartbeat(job.id, {"step": 1})
        assert jobs.recover_stale(stale_after_s=120) == []
    still = jobs.get(job.id)
    assert still is not None and still.status == "running"


def test_a_stale_job_folds_into_the_queued_job_of_its_model(jobs: JobStore, clock: Clock) -> None:
    first = running(jobs)
    newer, created = jobs.request(req(window=DataWindow(last_n=10)), learners=["sentiment-b"])
    assert created
    clock.advance(600)
    (stale,) = jobs.recover_stale(stale_after_s=120)
    assert stale.id == first.id and stale.status == "failed"
    assert stale.error == (
        "trainer stopped while running (no heartbeat for 600 s) on attempt 1; "
        f"its requests moved to queued job {newer.id}"
    )
    merged = jobs.get(newer.id)
    assert merged is not None and merged.status == "queued"
    assert merged.request_ids == [*first.request_ids, *newer.request_ids]
    assert merged.learners == ["sentiment", "sentiment-b"]
    # a redelivery of the stale job's request now finds the job that will answer it
    again, created_again = jobs.request(req(request_id=uuid.UUID(first.request_ids[0])), learners=["sentiment"])
    assert (again.id, created_again) == (newer.id, False)


def test_doctests() -> None:
    import doctest

    assert doctest.testmod(jobs_module).failed == 0
