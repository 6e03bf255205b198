"""Rollouts in SQL: their state and statistics, steps, decisions, manual commands and the controller's positions.

The controller saves everything it changed since the last save, and the positions of its
consumers, in one transaction (:meth:`RolloutStore.save`). It resumes from the positions it
saved, so a record read before a kill and replayed after it counts once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from learners.rollout import RolloutPolicy, RolloutStats
from schemas.envelope import utc_now
from workers.store.engine import available, writer
from workers.store.models import (
    ACTIVE_ROLLOUT_STATES,
    Rollout,
    RolloutCommand,
    RolloutDecision,
    RolloutOffset,
    RolloutStep,
)

__all__ = ["Command", "DecisionRecord", "LiveRollout", "RolloutStore", "new_rollout_id"]

MANUAL_ACTIONS = ("promote", "abort", "pause", "resume")


def new_rollout_id() -> str:
    return uuid.uuid4().hex


@dataclass
class LiveRollout:
    """A rollout as the controller holds it in memory between saves."""

    id: str
    model: str
    state: str
    policy: RolloutPolicy
    champion_version: str | None
    challenger_version: str
    stats: RolloutStats
    started_at: datetime
    step_started_at: datetime
    step: int = 0
    reason: str = "started"
    updated_at: datetime = field(default_factory=utc_now)
    ended_at: datetime | None = None
    previous_champion: str | None = None

    @property
    def share(self) -> float:
        return self.policy.share(self.step)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_ROLLOUT_STATES


@dataclass(frozen=True)
class DecisionRecord:
    rollout_id: str
    step: int
    action: str
    reason: str
    statistics: dict[str, Any]
    manual: bool = False
    decided_at: datetime = field(default_factory=utc_now)
    #: A step that starts with this decision (advance, and the first step at the start).
    new_step: tuple[int, float] | None = None


@dataclass(frozen=True)
class Command:
    id: int
    model: str
    action: str


class RolloutStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(writer(engine), expire_on_commit=False)
        self._read = sessionmaker(engine, expire_on_commit=False)

    # --- the controller -------------------------------------------------------------------------

    def load_active(self) -> list[LiveRollout]:
        with available("loading rollouts"), self._read() as s:
            rows = s.scalars(select(Rollout).where(Rollout.state.in_(ACTIVE_ROLLOUT_STATES))).all()
            return [_live(r) for r in rows]

    def offsets(self) -> dict[tuple[str, int], int]:
        with available("loading rollout positions"), self._read() as s:
            return {(o.topic, o.partition): o.offset for o in s.scalars(select(RolloutOffset))}

    def pending_commands(self) -> list[Command]:
        with available("reading rollout commands"), self._read() as s:
            rows = s.scalars(select(RolloutCommand).where(RolloutCommand.done_at.is_(None)).order_by(RolloutCommand.id))
            return [Command(c.id, c.model, c.action) for c in rows]

    def save(
        self,
        rollouts: list[LiveRollout],
        decisions: list[DecisionRecord],
        offsets: dict[tuple[str, int], int],
        done: dict[int, str],
    ) -> None:
        """Everything the controller changed, and where it has read up to, in one transaction."""
        now = utc_now()
        with available("saving rollouts"), self._session.begin() as s:
            for r in rollouts:
                s.merge(_row(r))
            s.flush()
            for d in decisions:
                s.add(RolloutDecision(rollout_id=d.rollout_id, step=d.step, action=d.action, reason=d.reason,
                                      manual=d.manual, statistics=d.statistics, decided_at=d.decided_at))
                if d.action not in ("pause", "resume", "start"):
                    _end_step(s, d.rollout_id, d.action, d.decided_at)
                if d.new_step is not None:
                    s.add(RolloutStep(rollout_id=d.rollout_id, step=d.new_step[0], share=d.new_step[1],
                                      started_at=d.decided_at))
            for (topic, partition), offset in offsets.items():
                s.merge(RolloutOffset(topic=topic, partition=partition, offset=offset))
            for command_id, result in done.items():
                c = s.get(RolloutCommand, command_id)
                if c is not None:
                    c.done_at, c.result = now, result

    # --- people ---------------------------------------------------------------------------------

    def request(self, model: str, action: str) -> int:
        """Queue a manual override for the controller; its id, to wait for its result."""
        if action not in MANUAL_ACTIONS:
            raise ValueError(f"unknown rollout action {action!r}; one of {', '.join(MANUAL_ACTIONS)}")
        with available("queueing a rollout command"), self._session.begin() as s:
            c = RolloutCommand(model=model, action=action, requested_at=utc_now())
            s.add(c)
            s.flush()
            return c.id

    def command_result(self, command_id: int) -> str | None:
        with available("reading a rollout command"), self._read() as s:
            c = s.get(RolloutCommand, command_id)
            return c.result if c is not None and c.done_at is not None else None

    def rollouts(self, *, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest rollouts, newest first, with their decisions (for `learnloop rollouts` and the status page)."""
        with available("listing rollouts"), self._read() as s:
            q = select(Rollout).order_by(Rollout.started_at.desc()).limit(limit)
            if model is not None:
                q = q.where(Rollout.model == model)
            out = []
            for r in s.scalars(q):
                decisions = s.scalars(select(RolloutDecision).where(RolloutDecision.rollout_id == r.id)
                                      .order_by(RolloutDecision.id)).all()
                out.append(_summary(r, decisions))
            return out


def _live(r: Rollout) -> LiveRollout:
    return LiveRollout(
        id=r.id, model=r.model, state=r.state, policy=RolloutPolicy.model_validate(r.policy),
        champion_version=r.champion_version, challenger_version=r.challenger_version,
        stats=RolloutStats.from_state(r.stats), started_at=r.started_at, step_started_at=r.step_started_at,
        step=r.step, reason=r.reason, updated_at=r.updated_at, ended_at=r.ended_at,
        previous_champion=r.previous_champion,
    )


def _row(r: LiveRollout) -> Rollout:
    return Rollout(
        id=r.id, model=r.model, state=r.state, mode=r.policy.mode, policy=r.policy.model_dump(mode="json"),
        champion_version=r.champion_version, challenger_version=r.challenger_version, step=r.step,
        stats=r.stats.to_state(), reason=r.reason, started_at=r.started_at, step_started_at=r.step_started_at,
        updated_at=r.updated_at, ended_at=r.ended_at, previous_champion=r.previous_champion,
    )


def _end_step(s: Session, rollout_id: str, outcome: str, at: datetime) -> None:
    open_step = s.scalars(select(RolloutStep).where(RolloutStep.rollout_id == rollout_id,
                                                    RolloutStep.ended_at.is_(None))).first()
    if open_step is not None:
        open_step.ended_at, open_step.outcome = at, outcome


def _summary(r: Rollout, decisions: Any) -> dict[str, Any]:
    stats = RolloutStats.from_state(r.stats)
    policy = RolloutPolicy.model_validate(r.policy)
    return {
        "id": r.id, "model": r.model, "state": r.state, "mode": r.mode, "step": r.step,
        "steps": policy.steps, "share": policy.share(r.step) if r.state == "running" else 0.0,
        "champion_version": r.champion_version, "challenger_version": r.challenger_version,
        "previous_champion": r.previous_champion, "metric": policy.metric, "reason": r.reason,
        "started_at": r.started_at.isoformat(), "ended_at": r.ended_at.isoformat() if r.ended_at else None,
        "champion": stats.champion.summary(), "challenger": stats.challenger.summary(),
        "difference": stats.difference(paired=policy.mode == "shadow").to_dict(),
        "decisions": [{"action": d.action, "step": d.step, "reason": d.reason, "manual": d.manual,
                       "decided_at": d.decided_at.isoformat(), "statistics": d.statistics} for d in decisions],
    }
