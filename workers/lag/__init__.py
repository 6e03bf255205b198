"""Consumer lag in one view: offsets, time lag, Burrow statuses and model freshness.

``learnloop lag`` (:func:`workers.lag.cli.lag_command`) prints it once;
``learnloop worker lag-exporter`` (:func:`workers.lag.cli.run_lag_exporter`)
serves it as Prometheus metrics. ``history``, ``status`` and ``freshness`` are
pure; ``offsets`` is the only module that talks to the broker; ``monitor``
puts them together.

Only the settings section is imported here, so ``workers.settings`` can
compose it without pulling in Kafka clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.lag.config import LagConfig

if TYPE_CHECKING:
    from workers.settings import Settings

__all__ = ["LagConfig", "lag_rows"]


async def lag_rows(settings: Settings) -> list[dict[str, Any]]:
    """One sample of every group's partitions as flat JSON rows (for the HTTP gateway's ``/v1/lag``)."""
    from workers.lag.cli import lag_rows as rows  # the Kafka clients load on first use, not with the settings

    return await rows(settings)
