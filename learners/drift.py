"""Drift detection on a learner's per-event error stream (River's ADWIN)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from river import drift

__all__ = ["AdwinMonitor", "DriftInfo"]


@dataclass(frozen=True, slots=True)
class DriftInfo:
    """One reported drift: where it happened and the error on either side of ADWIN's cut.

    ``before_*`` describes the old sub-window ADWIN dropped (the error under the old concept),
    ``after_*`` the recent window it kept (the error now); ``*_mean`` is the mean error there.

    >>> DriftInfo(n_seen=3001, before_n=3001, before_mean=0.1, after_n=40, after_mean=0.4,
    ...           metric="misclassification", delta=0.002).detector
    'adwin'
    """

    n_seen: int
    before_n: int
    before_mean: float
    after_n: int
    after_mean: float
    metric: str
    delta: float
    detector: str = "adwin"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AdwinMonitor:
    """ADWIN over an error stream, with a grace period and a cooldown between reported drifts.

    ADWIN sees every value; the monitor only decides which of its detections to report. A
    detection inside the grace period or the cooldown, or (with ``direction="increase"``) one
    where the error fell, is counted in ``suppressed``.

    >>> monitor = AdwinMonitor(delta=0.002, cooldown=1000, grace=30)
    >>> reports = [monitor.update(0.0) for _ in range(1000)] + [monitor.update(1.0) for _ in range(200)]
    >>> [info.n_seen for info in reports if info is not None]
    [1024]
    >>> info = monitor.last_drift
    >>> monitor.drifts, info.before_n, info.after_n, round(info.after_mean, 3)
    (1, 968, 56, 0.429)
    """

    def __init__(
        self,
        delta: float = 0.002,
        cooldown: int = 1000,
        grace: int = 30,
        metric: str = "error",
        direction: str = "increase",
    ) -> None:
        if direction not in ("increase", "any"):
            raise ValueError(f"direction must be 'increase' or 'any', not {direction!r}")
        self.delta = delta
        self.cooldown = cooldown
        self.grace = grace
        self.direction = direction
        self.metric = metric
        self._adwin = drift.ADWIN(delta=delta)  # type: ignore[no-untyped-call]
        self._n_seen = 0
        self._drifts = 0
        self._suppressed = 0
        self._last_drift: DriftInfo | None = None
        self._drift_detected = False

    @property
    def n_seen(self) -> int:
        """Errors fed so far (the 1-based position of the latest one)."""
        return self._n_seen

    @property
    def drift_detected(self) -> bool:
        """Whether the latest update reported a drift."""
        return self._drift_detected

    @property
    def drifts(self) -> int:
        return self._drifts

    @property
    def suppressed(self) -> int:
        """ADWIN detections not reported because of the grace period or the cooldown."""
        return self._suppressed

    @property
    def last_drift(self) -> DriftInfo | None:
        return self._last_drift

    def update(self, error: float) -> DriftInfo | None:
        """Feed one error; returns the drift it reveals, if one is to be reported."""
        adwin = self._adwin
        before_n, before_mean = adwin.width, adwin.estimation
        adwin.update(error)  # type: ignore[no-untyped-call]
        self._n_seen += 1
        self._drift_detected = False
        if not adwin.drift_detected:
            return None
        last = self._last_drift
        if self._n_seen <= self.grace or (last is not None and self._n_seen - last.n_seen < self.cooldown):
            self._suppressed += 1
            return None
        # ADWIN reports only what it kept; the dropped part follows from the totals.
        after_n, after_mean = int(adwin.width), float(adwin.estimation)
        dropped_n = int(before_n) + 1 - after_n
        dropped_mean = (
            (before_n * before_mean + error - after_n * after_mean) / dropped_n if dropped_n > 0 else before_mean
        )
        if self.direction == "increase" and after_mean <= dropped_mean:
            self._suppressed += 1
            return None
        info = DriftInfo(
            n_seen=self._n_seen,
            before_n=dropped_n,
            before_mean=float(dropped_mean),
            after_n=after_n,
            after_mean=after_mean,
            metric=self.metric,
            delta=self.delta,
        )
        self._drifts += 1
        self._last_drift = info
        self._drift_detected = True
        return info

    def __repr__(self) -> str:
        return (
            f"AdwinMonitor(delta={self.delta}, cooldown={self.cooldown}, grace={self.grace}, "
            f"direction={self.direction!r}, "
            f"n_seen={self._n_seen}, drifts={self._drifts}, suppressed={self._suppressed})"
        )
