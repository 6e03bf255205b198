"""Live model versions: the feedback loop publishes each learner's model after it changes.

A publication is one learner's signed snapshot (``learners.snapshot``: HMAC with the snapshot
key), stored in the model store by learner and version and announced as
``ModelUpdate(kind="online-snapshot")`` on ``learnloop.model-updates``, keyed by learner.

When: a learner that learned something is published at most every ``publish_every_s``, and
after every snapshot (so what is durable is also served, and a burst is served soon after
it ends). The feedback loop calls :meth:`ModelPublisher.capture` between batches; it pickles
and signs the changed learners there (the only moment their state is not being changed) and
hands the bytes over. Storing and announcing run in a background task that keeps only the
newest capture per learner, so a slow or unreachable store never holds learning up, and a
failed publication loses nothing: the learner is captured again at the next tick, newer.

Versions: a learner's version is its ``n_learned`` (events learned). It is monotonic across
restarts and rewinds because the store refuses a version at or below the latest one (see
``streams.ports.ModelStore.publish``). A worker that resumes from a snapshot re-learns events
it had learned before the crash, and with a join or an orphan expiring at another moment the
re-learned model of the same number may differ from the one published before; it is never
published under that number: the store keeps the first, serving stays on it, and the next
publication is the first number above it. So a version names one model, and a version ``v``
has learned exactly ``v`` events of that learner's stream: a prediction logged with
``model_version`` says which model served it, and whether that model had seen a given event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from learners.snapshot import dump_snapshot
from schemas import Envelope, Lineage, ModelUpdate
from schemas.errors import StoreUnavailable
from streams.config import ServingConfig
from streams.feedback import PartitionState
from streams.metrics import FeedbackMetrics, feedback_metrics
from streams.partitioning import owner_partition
from streams.ports import ModelStore

__all__ = ["ONLINE_ALIAS", "ModelPublisher"]

log = logging.getLogger(__name__)

ONLINE_ALIAS = "online"
"""The alias online snapshots are announced under (fine-tuned models use champion, challenger, ...)."""

Announce = Callable[[list[Envelope]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Capture:
    learner: str
    version: int
    blob: bytes
    metrics: dict[str, float]


class ModelPublisher:
    """Captures changed learners on the feedback loop; stores and announces them in the background."""

    def __init__(
        self,
        *,
        store: ModelStore,
        snapshot_key: bytes,
        source: str,
        config: ServingConfig | None = None,
        metrics: FeedbackMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.snapshot_key = snapshot_key
        self.source = source
        self.config = config or ServingConfig()
        self.metrics = metrics or feedback_metrics()
        self.clock = clock
        self._captured: dict[str, int] = {}  # the newest version captured (or known stored) per learner
        self._published: dict[str, int] = {}  # the newest version this process stored per learner
        self._pending: dict[str, _Capture] = {}  # newest capture per learner, not yet stored
        self._failing: set[str] = set()
        self._last = -math.inf
        self._captured_at: dict[str, float] = {}  # clock() at each learner's last capture
        self._behind = False  # the last capture ran out of its budget: continue at the next batch
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._announce: Announce | None = None

    # -- on the feedback loop -------------------------------------------------------

    def capture(
        self, states: Iterable[PartitionState], *, after_snapshot: bool = False, partitions: int | None = None
    ) -> int:
        """Pickle and sign each learner that learned since its last capture, when due; returns how many.

        With the feedback topic's partition count, only the learners a partition owns are captured
        (``streams.partitioning``): a model left on its former owner after the count changed is not served.
        Never awaits: called between batches, while no learner is being changed.
        """
        now = self.clock()
        if not (after_snapshot or self._behind) and now - self._last < self.config.publish_every_s:
            return 0
        self._last = now
        changed = []
        for state in states:
            for name, slot in state.slots.items():
                if slot.learner.n_seen <= self._captured.get(name, 0):
                    continue
                if partitions is not None and owner_partition(name, partitions) != state.partition:
                    continue
                changed.append((self._captured_at.get(name, -math.inf), name, slot, state))
        # Within the loop-time budget, the learners captured longest ago first: many large learners
        # are captured over several batches instead of holding one batch up for all of them.
        changed.sort(key=lambda c: c[0])
        budget_s, started, captured = self.config.capture_budget_ms / 1000, time.perf_counter(), 0
        self._behind = False
        for _, name, slot, state in changed:
            if captured and time.perf_counter() - started >= budget_s:
                self._behind = True  # the rest after the next batch, whatever the timer says
                break
            t0 = time.perf_counter()
            version = slot.learner.n_seen
            metrics = {k: v for k, v in slot.learner.metrics.items() if math.isfinite(v)}
            extra = {"learner": name, "version": version, "metrics": metrics, "task": slot.learner.spec.task}
            offsets = {f"{state.topic}:{state.partition}": state.next_offset}
            blob = dump_snapshot(slot.learner, key=self.snapshot_key, n_seen=version, offsets=offsets, extra=extra)
            self.metrics.publish_capture_seconds.observe(time.perf_counter() - t0)
            self._pending[name] = _Capture(name, version, blob, metrics)
            self._captured[name] = version
            self._captured_at[name] = now
            captured += 1
        if captured:
            self._wake.set()
        return captured

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, announce: Announce) -> None:
        """Publish in a background task on the running loop; ``announce`` sends and waits for the acks."""
        self._announce = announce
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="learnloop-model-publisher")
        self._task.add_done_callback(_report_crash)

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish what was captured last (at most ``timeout`` seconds), then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.warning("model publication still running after %.0fs at shutdown; the next owner publishes", timeout)
            self._task.cancel()
        except Exception:  # logged where it happened
            pass
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.publish_pending()
            if self._closing and not self._pending:
                return

    # -- publishing --------------------------------------------------------------------------

    async def publish_pending(self) -> None:
        """Store and announce the newest capture of each learner (each failure is logged, never raised)."""
        pending, self._pending = self._pending, {}
        for capture in pending.values():
            await self._publish(capture)

    async def _publish(self, capture: _Capture) -> None:
        name, version = capture.learner, capture.version
        try:
            stored, latest = await self.store.publish(name, version, capture.blob)
        except Exception as exc:  # StoreUnavailable, or a store error: learning goes on, the next tick retries
            self._failed(capture, exc)
            return
        if not stored:  # the store has this number or a newer one: a replay after a rewind
            self.metrics.model_publications.labels(name, "superseded").inc()
            self._captured[name] = max(self._captured.get(name, 0), latest)
            return
        parent = self._published.get(name)
        self._published[name] = version
        update = ModelUpdate(
            source=self.source,
            model=name,
            version=str(version),
            kind="online-snapshot",
            uri=self.store.uri(name, version),
            alias=ONLINE_ALIAS,
            metrics=capture.metrics,
            lineage=Lineage(parent_version=str(parent) if parent is not None else None, n_samples=version),
        )
        try:
            assert self._announce is not None, "start() first"
            await self._announce([update])
        except (KafkaError, OSError, TimeoutError) as exc:
            # Stored, so predictors find it when they next read the store; the next one is announced.
            self._failed(capture, exc, stored=True)
            return
        self.metrics.model_publications.labels(name, "published").inc()
        if name in self._failing:
            self._failing.discard(name)
            log.info("%s: publications work again (version %d)", name, version)

    def _failed(self, capture: _Capture, exc: BaseException, *, stored: bool = False) -> None:
        name = capture.learner
        self.metrics.model_publications.labels(name, "failed").inc()
        if not stored and self._captured.get(name) == capture.version:
            self._captured[name] = self._published.get(name, 0)  # captured again, newer, at the next tick
        if name not in self._failing:  # once per streak: it is retried every publish_every_s
            self._failing.add(name)
            what = "stored but not announced" if stored else "not published"
            expected = isinstance(exc, StoreUnavailable | KafkaError | OSError | TimeoutError)
            log.error("%s version %d %s (%s); the next publication carries a newer model", name, capture.version,
                      what, exc, exc_info=None if expected else exc)  # fmt: skip


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("model publication stopped: learning goes on, no new version is published",
                  exc_info=task.exception())  # fmt: skip
