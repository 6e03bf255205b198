"""The rollout controller: starts a rollout per gated challenger, joins labels to each version's predictions, decides.

It holds the active rollout of each model in memory and :mod:`learners.rollout` does the
statistics. The worker (``worker.py``) feeds it records and, every ``tick_s``, calls
:meth:`RolloutController.tick`, sends :meth:`RolloutController.outbox` and saves the changes with
the consumer positions in one transaction. Applying a decision twice (after a kill between the
announcement and the save) moves the same alias to the same version and announces the same state.

Predictions wait for their label in Redis (``<prefix>rollout:pred:<prediction_id>``, one field
per arm, with a TTL); a shadow copy is stored under the prediction it mirrors, so the label of
the answered prediction scores both versions on the same request (the paired test).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import redis.asyncio as aioredis

from learners.config import LearnersConfig
from learners.labels import coerce_label, resolve_target
from learners.rollout import Decision, RolloutPolicy, RolloutStats, decide, outcome
from schemas import Envelope, FeedbackEvent, Lineage, ModelUpdate, PredictionEvent, RolloutEvent
from schemas.envelope import utc_now
from schemas.errors import LabelError, LearnloopError
from workers.rollouts.config import RolloutConfig
from workers.rollouts.metrics import RolloutMetrics
from workers.rollouts.store import Command, DecisionRecord, LiveRollout, RolloutStore, new_rollout_id

log = logging.getLogger(__name__)

FINAL_STATE = {"promote": "promoted", "rollback": "rolled_back", "abort": "aborted", "inconclusive": "inconclusive"}
LABELLED = "labelled"  # the Redis field holding the event id of the feedback that labelled a prediction


class Aliases(Protocol):
    """The registry's aliases (``workers.trainer.registry.ModelRegistry`` in the worker)."""

    def alias_version(self, model_name: str, alias: str) -> str | None: ...
    def set_alias(self, model_name: str, alias: str, version: str) -> None: ...


class RolloutController:
    def __init__(
        self,
        *,
        store: RolloutStore,
        aliases: Aliases,
        learners: LearnersConfig,
        config: RolloutConfig,
        redis: aioredis.Redis,
        prefix: str,
        source: str,
        metrics: RolloutMetrics,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store, self.aliases, self.learners, self.config = store, aliases, learners, config
        self.redis, self.prefix, self.source, self.metrics, self.clock = redis, prefix, source, metrics, clock
        self.active: dict[str, LiveRollout] = {}
        self.changed: dict[str, LiveRollout] = {}
        self.decisions: list[DecisionRecord] = []
        self.outbox: list[Envelope] = []
        self.done: dict[int, str] = {}

    def load(self) -> None:
        """Resume the active rollouts and announce their state again (serving may have missed it)."""
        for r in self.store.load_active():
            self.active[r.model] = r
            self.outbox.append(self._event(r))
            log.info("resumed rollout %s of %s: v%s vs champion v%s, step %d (%s)", r.id, r.model,
                     r.challenger_version, r.champion_version, r.step + 1, r.state)

    def saved(self) -> None:
        """The changes, decisions and command results are in SQL and the announcements sent."""
        self.changed.clear()
        self.decisions.clear()
        self.outbox.clear()
        self.done.clear()

    def policy_for(self, model: str) -> RolloutPolicy | None:
        own = self.learners.rollout_policy(model, self.config.policy)
        return own if own is not None else (self.config.policy if self.config.enabled else None)

    # --- inputs ---------------------------------------------------------------------------------

    def on_model_update(self, ev: ModelUpdate) -> None:
        if ev.kind != "fine-tuned" or ev.alias != "challenger" or not ev.rollout:
            return
        current = self.active.get(ev.model)
        if current is not None and current.challenger_version == ev.version:
            return
        policy = self.policy_for(ev.model)
        if policy is None:
            log.warning("%s v%s asks for a rollout, but no policy covers %s (LEARNLOOP_ROLLOUT__ENABLED or "
                        "[rollouts.%s] in the learners file): it stays challenger", ev.model, ev.version,
                        ev.model, ev.model)
            return
        champion = self.aliases.alias_version(ev.model, "champion")
        if champion is None or champion == ev.version:
            log.warning("%s v%s: no other champion to roll out against; it stays challenger until "
                        "`learnloop rollout promote %s`", ev.model, ev.version, ev.model)
            return
        if current is not None:
            self._finish(current, "abort", f"superseded by challenger v{ev.version}", manual=False, stats={})
        now = self.clock()
        r = LiveRollout(id=new_rollout_id(), model=ev.model, state="running", policy=policy,
                        champion_version=champion, challenger_version=ev.version,
                        stats=RolloutStats(alpha=policy.alpha), started_at=now, step_started_at=now,
                        reason=f"challenger v{ev.version} passed the offline gate")
        self.active[r.model] = r
        self._record(r, "start", r.reason, {}, manual=False, new_step=(0, r.share))
        log.info("rollout %s of %s started: v%s vs champion v%s, %s at %g %%", r.id, r.model,
                 r.challenger_version, champion, policy.mode, r.share)

    def _routed(self, ev: PredictionEvent) -> LiveRollout | None:
        r = self.active.get(ev.model or ev.learner)
        return r if r is not None and ev.rollout_id == r.id and ev.arm is not None else None

    async def on_predictions(self, events: Sequence[PredictionEvent]) -> None:
        rows: dict[str, dict[str, str]] = {}
        for ev in events:
            r = self._routed(ev)
            if r is None:
                continue
            assert ev.arm is not None
            r.stats.arm(ev.arm).served(ev.latency_ms or 0.0, failed=ev.failed)
            self.changed[r.id] = r
            if ev.failed or ev.prediction is None:
                continue
            key = ev.shadow_of or ev.prediction_id
            rows.setdefault(key, {})[ev.arm] = json.dumps(
                {"rollout": r.id, "model": r.model, "version": ev.model_version, "prediction": ev.prediction,
                 "probability": ev.probability, "learner": ev.learner})
        if not rows:
            return
        async with self.redis.pipeline(transaction=False) as p:
            for pid, fields in rows.items():
                p.hset(self._key(pid), mapping=fields)  # type: ignore[arg-type]
                p.expire(self._key(pid), self.config.prediction_ttl_s)
            await p.execute()

    async def on_feedback(self, events: Sequence[FeedbackEvent]) -> None:
        wanted = [ev for ev in events if ev.prediction_id is not None] if self.active else []
        if not wanted:
            return
        async with self.redis.pipeline(transaction=False) as p:
            for ev in wanted:
                p.hgetall(self._key(str(ev.prediction_id)))
            found: list[dict[bytes, bytes]] = await p.execute()
        for ev, held in zip(wanted, found, strict=True):
            arms = {k.decode(): json.loads(v) for k, v in held.items() if k != LABELLED.encode()}
            if not arms:
                self.metrics.unmatched_labels.inc()
                continue
            assert ev.prediction_id is not None
            # One label per prediction; the same event again (a replay after a kill) still counts.
            key = self._key(ev.prediction_id)
            first = bool(await self.redis.hsetnx(key, LABELLED, str(ev.event_id)))
            if not first and _text(await self.redis.hget(key, LABELLED)) != str(ev.event_id):
                continue
            self._labelled(ev, arms)

    def _labelled(self, ev: FeedbackEvent, arms: dict[str, dict[str, Any]]) -> None:
        first = next(iter(arms.values()))
        r = self.active.get(self._model_of(first, ev))
        if r is None:
            return
        try:
            spec = self.learners.resolve(first.get("learner") or ev.learner)
            label = resolve_target(task=spec.task, spec=spec.labels, label=ev.label, rating=ev.rating,
                                   signal=ev.signal, signal_value=ev.signal_value).y
        except (LabelError, LearnloopError) as exc:
            log.debug("feedback %s gives no label for the rollout of %s: %s", ev.event_id, r.model, exc)
            return
        scores: dict[str, float | None] = {}
        for arm, held in arms.items():
            if held.get("rollout") != r.id or arm not in ("champion", "challenger"):
                continue
            scores[arm] = self._score(r.policy, spec.task, label, held)
            r.stats.arm(arm).labelled(scores[arm])  # type: ignore[arg-type]
        if r.policy.mode == "shadow" and len(scores) == 2:
            r.stats.pair(scores["champion"], scores["challenger"])
        if scores:
            self.changed[r.id] = r

    @staticmethod
    def _model_of(held: dict[str, Any], ev: FeedbackEvent) -> str:
        return str(held.get("model") or held.get("learner") or ev.learner)

    @staticmethod
    def _score(policy: RolloutPolicy, task: str, label: Any, held: dict[str, Any]) -> float | None:
        try:
            predicted = coerce_label(task, held["prediction"])
        except LabelError:
            predicted = held["prediction"]
        p = held.get("probability")
        # The event carries p(predicted label); a binary model gives p(label) from it.
        p_label = None if p is None else (p if predicted == label else 1.0 - p)
        return outcome(policy.metric, label, predicted, p_label)

    def _key(self, prediction_id: str) -> str:
        return f"{self.prefix}rollout:pred:{prediction_id}"

    # --- decisions ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Apply people's commands, then decide every running rollout."""
        for c in self.store.pending_commands():
            self.done[c.id] = self._command(c)
        now = self.clock()
        for r in list(self.active.values()):
            if r.state != "running":
                continue
            d = decide(r.policy, r.stats, step=r.step, step_age_s=(now - r.step_started_at).total_seconds())
            self._apply(r, d)
        self._export()

    def _apply(self, r: LiveRollout, d: Decision, *, manual: bool = False) -> None:
        if d.action == "hold":
            return
        if d.action == "advance":
            r.step += 1
            r.stats.new_step()
            r.step_started_at = self.clock()
            r.reason = d.reason
            self._record(r, "advance", d.reason, d.statistics, manual=manual, new_step=(r.step, r.share))
            log.info("rollout of %s: %s; now %g %%", r.model, d.reason, r.share)
            return
        self._finish(r, d.action, d.reason, manual=manual, stats=d.statistics)

    def _finish(self, r: LiveRollout, action: str, reason: str, *, manual: bool, stats: dict[str, Any]) -> None:
        if action == "promote":
            self._move_champion(r.model, r.challenger_version, previous=r.champion_version)
            r.previous_champion = r.champion_version
        elif r.champion_version is not None and self.aliases.alias_version(r.model, "champion") != r.champion_version:
            self._move_champion(r.model, r.champion_version, previous=None)  # put the alias back
        r.state = FINAL_STATE[action]
        r.reason, r.ended_at = reason, self.clock()
        self.active.pop(r.model, None)
        self._record(r, action, reason, stats, manual=manual)
        level = logging.WARNING if action in ("rollback", "abort") else logging.INFO
        log.log(level, "rollout of %s v%s %s: %s", r.model, r.challenger_version, r.state, reason)

    def _move_champion(self, model: str, version: str, *, previous: str | None) -> None:
        self.aliases.set_alias(model, "champion", version)
        self.outbox.append(ModelUpdate(source=self.source, model=model, version=version, kind="fine-tuned",
                                       uri=f"models:/{model}/{version}", alias="champion",
                                       lineage=Lineage(parent_version=previous)))

    def _command(self, c: Command) -> str:
        r = self.active.get(c.model)
        manual = f"manual {c.action}"
        if r is None:
            if c.action != "promote":
                return f"no running rollout of {c.model}"
            challenger = self.aliases.alias_version(c.model, "challenger")
            champion = self.aliases.alias_version(c.model, "champion")
            if challenger is None or challenger == champion:
                return f"{c.model} has no challenger to promote"
            self._move_champion(c.model, challenger, previous=champion)
            log.info("%s v%s promoted to champion by hand (no rollout)", c.model, challenger)
            return f"promoted v{challenger} to champion (was v{champion})"
        if c.action in ("promote", "abort"):
            stats = decide(r.policy, r.stats, step=r.step, step_age_s=0.0).statistics
            self._finish(r, c.action, manual, manual=True, stats=stats)
            return f"{r.state} v{r.challenger_version} (rollout {r.id})"
        if (c.action == "pause") == (r.state == "paused"):
            return f"rollout {r.id} of {c.model} is already {r.state}"
        r.state = "paused" if c.action == "pause" else "running"
        if r.state == "running":
            r.step_started_at = self.clock()  # a paused step's clock restarts; its labels stay
        r.reason = manual
        self._record(r, c.action, manual, {}, manual=True)
        return f"rollout {r.id} of {c.model} {r.state}"

    def _record(self, r: LiveRollout, action: str, reason: str, stats: dict[str, Any], *, manual: bool,
                new_step: tuple[int, float] | None = None) -> None:
        r.updated_at = self.clock()
        self.changed[r.id] = r
        self.decisions.append(DecisionRecord(r.id, r.step, action, reason, stats, manual=manual,
                                             decided_at=r.updated_at, new_step=new_step))
        self.outbox.append(self._event(r, stats))
        self.metrics.decisions.labels(r.model, action).inc()

    def _event(self, r: LiveRollout, stats: dict[str, Any] | None = None) -> RolloutEvent:
        return RolloutEvent(source=self.source, model=r.model, rollout_id=r.id, state=r.state,  # type: ignore[arg-type]
                            mode=r.policy.mode, step=r.step, share=r.share if r.state == "running" else 0.0,
                            champion_version=r.champion_version, challenger_version=r.challenger_version,
                            reason=r.reason[:1000], decided_at=r.updated_at, statistics=_flat(stats or {}))

    def _export(self) -> None:
        for model in {r.model for r in self.changed.values()} | set(self.active):
            r = self.active.get(model)
            self.metrics.share.labels(model).set(r.share if r is not None and r.state == "running" else 0.0)
            if r is None:
                continue
            self.metrics.step.labels(model).set(r.step)
            for arm, version in (("champion", r.champion_version or "none"), ("challenger", r.challenger_version)):
                a = r.stats.arm(arm)  # type: ignore[arg-type]
                self.metrics.live_metric.labels(model, version, arm).set(a.cs.mean)
                self.metrics.labels.labels(model, version, arm).set(a.labels)
            diff = r.stats.difference(paired=r.policy.mode == "shadow")
            self.metrics.difference.labels(model, "lower").set(diff.lower)
            self.metrics.difference.labels(model, "upper").set(diff.upper)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _flat(stats: dict[str, Any]) -> dict[str, float]:
    """The numbers a RolloutEvent carries: the interval and each arm's mean and label count."""
    out: dict[str, float] = {}
    diff = stats.get("difference") or {}
    for k in ("lower", "upper", "estimate"):
        if isinstance(diff.get(k), int | float):
            out[f"difference_{k}"] = float(diff[k])
    for arm in ("champion", "challenger"):
        s = stats.get(arm) or {}
        if "labels" in s:
            out[f"{arm}_labels"] = float(s["labels"])
            out[f"{arm}_mean"] = float(s["metric"]["mean"])
            out[f"{arm}_error_rate"] = float(s["error_rate"])
    return out
