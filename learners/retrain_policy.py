"""Which drifts, schedules and volumes may ask for a retrain: a learner's ``[learners.X.retrain_policy]``.

A learner's ``RetrainGate`` sees its labels and its drifts and answers with the reason of a request
(``drift``, ``schedule``, ``volume``) or nothing; every request it holds back is counted by why.
Times are wall-clock seconds passed in by the caller, so the gate is pure and pickles with the learner.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["RetrainGate", "RetrainPolicySpec", "cron_matches"]

DriftKindName = Literal["error", "input", "prediction", "estimated_performance"]

_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))  # minute hour day-of-month month day-of-week


def _cron_field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"cron step must be positive in {part!r}")
        if body == "*":
            start, end = low, high
        elif "-" in body:
            first, _, last = body.partition("-")
            start, end = int(first), int(last)
        else:
            start = int(body)
            end = high if step_text else start
        if not low <= start <= end <= high:
            raise ValueError(f"cron field {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _parse_cron(expr: str) -> tuple[frozenset[int], ...]:
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"a cron schedule has 5 fields (minute hour day month weekday), not {len(fields)}: {expr!r}")
    try:
        return tuple(_cron_field(f, lo, hi) for f, (lo, hi) in zip(fields, _CRON_RANGES, strict=True))
    except ValueError as exc:
        raise ValueError(f"invalid cron schedule {expr!r}: {exc}") from None


def cron_matches(expr: str, at: datetime) -> bool:
    """Whether the minute of ``at`` (UTC) is one the 5-field cron ``expr`` names (Sunday is 0).

    Day of month and day of week combine as in cron: when both are restricted, either may match.

    >>> cron_matches("0 3 * * *", datetime(2026, 1, 5, 3, 0, tzinfo=UTC))
    True
    >>> cron_matches("*/15 * * * 1-5", datetime(2026, 1, 4, 3, 30, tzinfo=UTC))  # a Sunday
    False
    """
    minute, hour, day, month, weekday = _parse_cron(expr)
    at = at.astimezone(UTC)
    if at.minute not in minute or at.hour not in hour or at.month not in month:
        return False
    dow = (at.weekday() + 1) % 7
    day_any, weekday_any = len(day) == 31, len(weekday) == 7
    if day_any or weekday_any:
        return at.day in day and dow in weekday
    return at.day in day or dow in weekday


class RetrainPolicySpec(BaseModel):
    """When a learner with a ``retrain_model`` may ask for one.

    By default only a rise in the error (the labelled truth) asks: a shift of the inputs alone, or of
    the served predictions, is reported but retrains nothing.

    >>> RetrainPolicySpec().reasons
    ('error',)
    >>> RetrainPolicySpec(schedule="0 3 * * 0").schedule
    '0 3 * * 0'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    reasons: tuple[DriftKindName, ...] = ("error",)
    min_new_labels: int = Field(default=0, ge=0, description="labels learned since the last request")
    cooldown: float = Field(default=0.0, ge=0, description="seconds between two requests")
    persist_events: int = Field(default=0, ge=0, description="a drift must stand this many learned events")
    persist_seconds: float = Field(default=0.0, ge=0, description="and this many seconds before it asks")
    schedule: str | None = Field(default=None, description="cron (UTC): ask at these minutes")
    volume: int | None = Field(default=None, ge=1, description="ask after this many new labels")

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_cron(value)
        return value


class RetrainGate:
    """One learner's retrain decisions under its policy.

    >>> gate = RetrainGate(RetrainPolicySpec(min_new_labels=100, cooldown=60))
    >>> gate.labelled(50); gate.on_drift("error", n_seen=50, now=0.0)
    >>> gate.gated
    {'min_new_labels': 1}
    >>> gate.labelled(100); gate.on_drift("input", n_seen=150, now=1.0), gate.on_drift("error", n_seen=150, now=1.0)
    (None, 'drift')
    >>> gate.labelled(200); gate.on_drift("error", n_seen=350, now=30.0)
    >>> gate.gated
    {'min_new_labels': 1, 'reason_not_allowed:input': 1, 'cooldown': 1}
    """

    def __init__(self, policy: RetrainPolicySpec) -> None:
        self.policy = policy
        self._labels = 0  # labels learned since the last request
        self._last_request_at: float | None = None
        self._armed: tuple[int, float] | None = None  # (n_seen, time) of a drift waiting out its persistence
        self._last_minute: int | None = None
        self._gated: Counter[str] = Counter()
        self._requested: Counter[str] = Counter()

    @property
    def gated(self) -> dict[str, int]:
        """Requests held back, by why."""
        return dict(self._gated)

    def labelled(self, n: int = 1) -> None:
        self._labels += n

    def on_drift(self, kind: str, *, n_seen: int, now: float) -> str | None:
        """A drift of ``kind`` was accepted; ``"drift"`` when it may ask for a retrain now."""
        if kind not in self.policy.reasons:
            self._gated[f"reason_not_allowed:{kind}"] += 1
            return None
        if self.policy.persist_events or self.policy.persist_seconds:
            if self._armed is None:
                self._armed = (n_seen, now)
            self._gated["persisting"] += 1
            return None  # released by ``due`` once the drift has stood long enough
        return self._admit("drift", now)

    def due(self, *, n_seen: int, now: float) -> str | None:
        """Called per learned event: a persisted drift, the schedule or the volume may ask now."""
        policy = self.policy
        armed = self._armed
        if armed is not None and n_seen - armed[0] >= policy.persist_events and now - armed[1] >= (
            policy.persist_seconds
        ):
            self._armed = None
            return self._admit("drift", now)
        labels = self._labels
        if policy.volume is not None and labels and labels % policy.volume == 0:
            return self._admit("volume", now)  # asked once per ``volume`` labels, not on every later one
        if policy.schedule is not None:
            minute = int(now // 60)
            if minute != self._last_minute:
                self._last_minute = minute
                if cron_matches(policy.schedule, datetime.fromtimestamp(minute * 60, UTC)):
                    return self._admit("schedule", now)
        return None

    def _admit(self, reason: str, now: float) -> str | None:
        policy = self.policy
        if self._labels < policy.min_new_labels:
            self._gated["min_new_labels"] += 1
            return None
        if self._last_request_at is not None and now - self._last_request_at < policy.cooldown:
            self._gated["cooldown"] += 1
            return None
        self._labels = 0
        self._last_request_at = now
        self._requested[reason] += 1
        return reason

    def status(self) -> dict[str, Any]:
        return {
            "requested": dict(self._requested),
            "gated": dict(self._gated),
            "labels_since_request": self._labels,
            "drift_persisting": self._armed is not None,
        }
