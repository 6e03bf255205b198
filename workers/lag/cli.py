"""Entry points for ``learnloop lag`` and ``learnloop worker lag-exporter`` (wired into Typer by workers.cli).

``learnloop lag`` samples the broker ``cli_samples`` times, ``cli_interval_s``
apart, and prints the last sample: the columns of ``kafka-consumer-groups
--describe`` plus TIME-LAG (from the timestamp of the first unconsumed record)
and Burrow's STATUS (evaluated over those few samples; the exporter evaluates
over its full window), then one line per group and the freshness of each
learner's model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Sequence
from typing import Any

import typer
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from schemas.errors import ConfigError, StoreUnavailable
from streams.topics import Topics
from workers.cli.common import run_async
from workers.feedback.redis_store import RedisStore
from workers.lag.config import LagConfig
from workers.lag.exporter import LagExporter
from workers.lag.monitor import LagMonitor, LagView, LearnerSource, ProgressSource
from workers.lag.offsets import BrokerReader
from workers.settings import Settings

log = logging.getLogger(__name__)
PARTITION_COLUMNS = ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST",
                     "CLIENT-ID", "TIME-LAG", "STATUS")
GROUP_COLUMNS = ("GROUP", "STATUS", "STATE", "MEMBERS", "PARTITIONS", "TOTAL-LAG", "MAX-TIME-LAG")
FAILURE_COLUMNS = ("GROUP", "TOPIC", "PARTITION", "STOPPED-BECAUSE")
LEARNER_COLUMNS = ("LEARNER", "TOPIC", "PARTITION", "LAST-EVENT-AT", "NEWEST-EVENT-AT", "BEHIND", "FRESHNESS")


def known_groups(settings: Settings) -> dict[str, list[str]]:
    """learnloop's own groups and the topics each consumes (shown even before their first commit)."""
    t = Topics(settings.kafka.topic_prefix)
    return {
        settings.feedback.group_id: [t.feedback, t.predictions],
        settings.conversations.group_id: [t.conversations],
        settings.trainer.group_id: [t.retrain],
    }


def lag_command(settings: Settings, group: str | None, as_json: bool, *, config: LagConfig | None = None) -> int:
    """Print lag per group, topic and partition; exit code 1 when ``group`` has neither offsets nor members."""
    cfg = config or settings.lag
    view = run_async(collect(settings, cfg, group), settings=settings)
    missing = group is not None and not any(g.group == group and (g.partitions or g.members) for g in view.groups)
    if as_json:
        typer.echo(json.dumps(view.as_json(), indent=2))
    elif not missing:
        typer.echo(render(view))
    if missing:
        typer.echo(f"consumer group {group!r} has no committed offsets and no members", err=True)
        return 1
    return 0


def run_lag_exporter(settings: Settings, *, config: LagConfig | None = None) -> None:
    """Serve the lag metrics until SIGTERM or SIGINT."""
    cfg = config or settings.lag
    host, port = metrics_address(settings, cfg)
    asyncio.run(_export(settings, cfg, host, port))


def metrics_address(settings: Settings, cfg: LagConfig) -> tuple[str, int]:
    """``lag.metrics_host/port`` when set; else the shared ``metrics`` section's; else the lag defaults."""
    shared, explicit = settings.metrics, cfg.model_fields_set
    host = cfg.metrics_host if "metrics_host" in explicit else shared.host
    port = cfg.metrics_port if "metrics_port" in explicit or shared.port is None else shared.port
    return host, port


# -- rendering -----------------------------------------------------------------------------


def render(view: LagView) -> str:
    """The three tables of the one-shot view, whitespace-aligned like ``kafka-consumer-groups``."""
    if not view.groups:
        return "no consumer groups found"
    parts = [_table(PARTITION_COLUMNS, [
        (r.group, r.topic, r.partition, _n(r.current_offset), _n(r.log_end_offset), _n(r.lag),
         r.consumer_id, r.host, r.client_id, _secs(r.time_lag_s), r.status.value)
        for r in view.partitions
    ])]
    parts.append(_table(GROUP_COLUMNS, [
        (g.group, g.status.value, g.state, g.members, g.partitions, g.total_lag, _secs(g.max_time_lag_s))
        for g in view.groups
    ]))
    if view.learners:
        parts.append(_table(LEARNER_COLUMNS, [
            (f.learner, f.topic, f.partition, f.last_event_at.isoformat() if f.last_event_at else None,
             f.newest_event_at.isoformat() if f.newest_event_at else None, _n(f.behind),
             _secs(f.freshness_s) + (" STALE" if f.stale else ""))
            for f in view.learners
        ]))
    failed = [r for r in view.partitions if r.failure]
    if failed:
        parts.append(_table(FAILURE_COLUMNS, [(r.group, r.topic, r.partition, r.failure) for r in failed]))
    if any(g.members for g in view.groups) and not any(r.consumer_id for r in view.partitions):
        parts.append("(the broker reports no partition assignments: CONSUMER-ID, HOST and CLIENT-ID show '-')")
    return "\n\n".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header)] + [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(" ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _n(v: int | None) -> str | None:
    return None if v is None else str(v)


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


# -- running -------------------------------------------------------------------------------


def _learner_source(store: RedisStore) -> LearnerSource:
    async def statuses() -> list[dict[str, Any]]:
        try:
            return await store.learner_statuses()
        except (StoreUnavailable, RedisError, OSError) as exc:  # lag does not depend on Redis: no freshness
            log.warning("model freshness unavailable: %s", exc)
            return []

    return statuses


def _progress_source(store: RedisStore) -> ProgressSource:
    async def progress() -> list[dict[str, Any]]:
        try:
            return await store.progress()
        except (StoreUnavailable, RedisError, OSError) as exc:  # liveness falls back to group membership
            log.warning("worker heartbeats unavailable: %s", exc)
            return []

    return progress


def _reader(settings: Settings, cfg: LagConfig) -> BrokerReader:
    return BrokerReader(settings.kafka, fetch_timeout_ms=cfg.fetch_timeout_ms, fetch_max_bytes=cfg.fetch_max_bytes)


async def lag_rows(settings: Settings) -> list[dict[str, Any]]:
    """One sample of every group's partitions as flat JSON rows (for the HTTP gateway's ``/v1/lag``)."""
    view = await collect(settings, settings.lag.model_copy(update={"cli_samples": 1}), None)
    return [row.as_json() for row in view.partitions]


async def collect(settings: Settings, cfg: LagConfig, group: str | None) -> LagView:
    store = RedisStore.from_config(settings.redis)
    # Freshness belongs to the feedback group's view: shown unless another group was asked for.
    learners = _learner_source(store) if group in (None, settings.feedback.group_id) else None
    try:
        async with _reader(settings, cfg) as reader:
            monitor = LagMonitor(reader, cfg, known=known_groups(settings), learners=learners,
                                 progress=_progress_source(store), time_lag="record")
            view = await monitor.sample([group] if group else None)
            for _ in range(cfg.cli_samples - 1):
                await asyncio.sleep(cfg.cli_interval_s)
                view = await monitor.sample([group] if group else None)
            return view
    finally:
        await store.close()


async def _export(settings: Settings, cfg: LagConfig, host: str, port: int) -> None:
    store = RedisStore.from_config(settings.redis)
    reader = _reader(settings, cfg)
    monitor = LagMonitor(reader, cfg, known=known_groups(settings), learners=_learner_source(store),
                         progress=_progress_source(store))
    exporter = LagExporter(monitor, cfg)
    try:
        exporter.serve(host, port)
    except OSError as exc:
        await store.close()
        raise ConfigError(f"LEARNLOOP_LAG__METRICS_PORT: cannot serve metrics on {host}:{port}: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        delay = 0.5
        while not stop.is_set():  # the broker may come up after us (compose, restarts)
            try:
                await reader.start()
                break
            except (KafkaError, OSError) as exc:
                exporter.metrics.errors.inc()
                log.warning("lag exporter: broker not reachable (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, 30.0)
        await exporter.run(stop)
        log.info("lag exporter stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        exporter.shutdown()
        await reader.close()
        await store.close()
