"""What every drift monitor reports, and the population stability index they share."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["DriftKind", "DriftSignal", "Monitor", "psi"]

DriftKind = Literal["error", "input", "prediction", "estimated_performance"]

# A bin empty on one side would make PSI infinite; this floor keeps it finite and comparable.
_PSI_FLOOR = 1e-4


@dataclass(frozen=True, slots=True)
class DriftSignal:
    """One drift a monitor accepted: what moved, where in the stream, and the statistics either side.

    ``before`` describes the reference the monitor compared against, ``after`` the window that moved;
    ``statistic`` is the value that crossed ``threshold``.

    >>> s = DriftSignal(detector="psi", kind="input", feature="age", n_seen=2000, statistic=0.41,
    ...                 threshold=0.25, before={"n": 1000, "mean": 40.0}, after={"n": 1000, "mean": 55.0})
    >>> s.to_dict()["kind"], s.model_version
    ('input', None)
    """

    detector: str
    kind: DriftKind
    feature: str | None
    n_seen: int
    statistic: float
    threshold: float
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    model_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index between two histograms over the same bins (counts or shares).

    0 means the same distribution; above 0.25 is the usual "significant shift".

    >>> psi([50, 50], [50, 50])
    0.0
    >>> round(psi([90, 10], [50, 50]), 3)
    0.879
    """
    total_e, total_a = float(sum(expected)), float(sum(actual))
    if total_e <= 0 or total_a <= 0:
        return 0.0
    value = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe = max(e / total_e, _PSI_FLOOR)
        pa = max(a / total_a, _PSI_FLOOR)
        value += (pa - pe) * math.log(pa / pe)
    return value


class Monitor:
    """Hyperparameters are ``__init__`` arguments stored unchanged, so a monitor clones from them."""

    def params(self) -> dict[str, Any]:
        """The constructor arguments this monitor was built with."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def clone(self) -> Any:
        """A fresh monitor with the same hyperparameters and no state."""
        return type(self)(**self.params())
