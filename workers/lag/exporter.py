"""The lag exporter: a :class:`LagMonitor` sampled on a timer, served as Prometheus metrics.

Metrics (labels in braces)::

    learnloop_consumer_lag{group,topic,partition}             records behind (log end - committed)
    learnloop_consumer_lag_seconds{group,topic,partition}     time lag (interpolated, see history.py)
    learnloop_committed_offset{group,topic,partition}         the group's committed offset
    learnloop_log_end_offset{topic,partition}                 high watermark, from a fetch response
    learnloop_consumer_status{group,topic,partition,status}   1 for the current Burrow status, 0 for the others
    learnloop_consumer_status_code{group,topic,partition}     the same as a number: OK 1, WARN 2, STOP 4,
                                                              STALL 5, REWIND 6 (Burrow's constants)
    learnloop_partition_failure{group,topic,partition,reason} 1 while the partition's worker has stopped on it
                                                              (snapshot_signature, snapshot_unreadable, ...)
    learnloop_group_status{group,status}                      1 for OK, WARN or ERR, 0 for the other two
    learnloop_group_status_code{group}                        OK 1, WARN 2, ERR 3
    learnloop_group_lag{group}                                total records behind
    learnloop_model_freshness_seconds{learner}                how far the model trails the newest event
    learnloop_model_stale{learner}                            1 when freshness is over ``freshness_bound_s``
    learnloop_lag_exporter_last_sample_timestamp_seconds      when the last sample succeeded
    learnloop_lag_exporter_errors_total                       samples that failed (the broker or Redis away)

Partitions a group never committed on export no lag, offset or status series;
series of groups, partitions and learners that disappear are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from schemas.errors import ConfigError, StoreUnavailable
from workers.lag.config import LagConfig
from workers.lag.monitor import LagMonitor, LagView
from workers.lag.status import GROUP_STATUSES, PARTITION_STATUSES

log = logging.getLogger(__name__)

_PART = ["group", "topic", "partition"]


class _Series:
    """A gauge whose label sets not set in the latest update are removed."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._now: set[tuple[str, ...]] = set()
        self._before: set[tuple[str, ...]] = set()

    def set(self, labels: Iterable[object], value: float) -> None:
        key = tuple(str(v) for v in labels)
        self.gauge.labels(*key).set(value)
        self._now.add(key)

    def sweep(self) -> None:
        for key in self._before - self._now:
            with contextlib.suppress(KeyError):
                self.gauge.remove(*key)
        self._before, self._now = self._now, set()


class LagMetrics:
    """The exporter's metrics on one registry.

    >>> from workers.lag.monitor import LagView
    >>> m = LagMetrics(CollectorRegistry())
    >>> m.update(LagView(time=1.0, partitions=[], groups=[], learners=[]))
    >>> m.registry.get_sample_value("learnloop_lag_exporter_last_sample_timestamp_seconds")
    1.0
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = r = registry

        def gauge(name: str, doc: str, labels: list[str]) -> _Series:
            return _Series(Gauge(name, doc, labels, registry=r))

        self.lag = gauge("learnloop_consumer_lag", "Records behind: log-end offset minus committed offset", _PART)
        self.lag_seconds = gauge("learnloop_consumer_lag_seconds", "Seconds behind (time lag)", _PART)
        self.committed = gauge("learnloop_committed_offset", "The group's committed offset", _PART)
        self.log_end = gauge("learnloop_log_end_offset", "Log-end offset (high watermark)", ["topic", "partition"])
        self.status = gauge(
            "learnloop_consumer_status", "1 for the partition's current Burrow status", [*_PART, "status"]
        )
        self.status_code = gauge(
            "learnloop_consumer_status_code", "Burrow status: OK 1, WARN 2, STOP 4, STALL 5, REWIND 6", _PART
        )
        self.failure = gauge(
            "learnloop_partition_failure", "1 while the partition's worker has stopped on it, by reason",
            [*_PART, "reason"],
        )
        self.group_status = gauge("learnloop_group_status", "1 for the group's current status", ["group", "status"])
        self.group_status_code = gauge("learnloop_group_status_code", "Group status: OK 1, WARN 2, ERR 3", ["group"])
        self.group_lag = gauge("learnloop_group_lag", "Records behind, all partitions of the group", ["group"])
        self.freshness = gauge(
            "learnloop_model_freshness_seconds", "How far the model trails the newest event produced", ["learner"]
        )
        self.stale = gauge("learnloop_model_stale", "1 when the model is older than the freshness bound", ["learner"])
        self.last_sample = Gauge(
            "learnloop_lag_exporter_last_sample_timestamp_seconds", "When the last sample succeeded", registry=r
        )
        self.errors = Counter("learnloop_lag_exporter_errors", "Samples that failed", registry=r)
        self._all = [self.lag, self.lag_seconds, self.committed, self.log_end, self.status, self.status_code,
                     self.failure, self.group_status, self.group_status_code, self.group_lag, self.freshness,
                     self.stale]

    def update(self, view: LagView) -> None:
        for row in view.partitions:
            part = (row.group, row.topic, row.partition)
            if row.log_end_offset is not None:
                self.log_end.set((row.topic, row.partition), row.log_end_offset)
            if row.failure_reason is not None:
                self.failure.set((*part, row.failure_reason), 1.0)
            if row.current_offset is None:
                continue
            self.committed.set(part, row.current_offset)
            if row.lag is not None:
                self.lag.set(part, row.lag)
            if row.time_lag_s is not None:
                self.lag_seconds.set(part, row.time_lag_s)
            for s in PARTITION_STATUSES:
                self.status.set((*part, s.value), 1.0 if row.status is s else 0.0)
            self.status_code.set(part, row.status.code)
        for g in view.groups:
            for s in GROUP_STATUSES:
                self.group_status.set((g.group, s.value), 1.0 if g.status is s else 0.0)
            self.group_status_code.set((g.group,), g.status.code)
            self.group_lag.set((g.group,), g.total_lag)
        for f in view.learners:
            if f.freshness_s is not None:
                self.freshness.set((f.learner,), f.freshness_s)
                self.stale.set((f.learner,), 1.0 if f.stale else 0.0)
        for series in self._all:
            series.sweep()
        self.last_sample.set(view.time)


class LagExporter:
    """Samples every ``sample_every_s`` until stopped; a failed sample is logged and counted, never fatal."""

    def __init__(self, monitor: LagMonitor, config: LagConfig, registry: CollectorRegistry | None = None) -> None:
        self.monitor = monitor
        self.config = config
        self.metrics = LagMetrics(registry if registry is not None else CollectorRegistry())
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def sample_once(self) -> LagView | None:
        try:
            view = await self.monitor.sample()
        except (KafkaError, StoreUnavailable, OSError, TimeoutError) as exc:
            self.metrics.errors.inc()
            log.warning("lag sample failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc,
                        self.config.sample_every_s)
            return None
        self.metrics.update(view)
        return view

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            await self.sample_once()
            delay = max(0.0, self.config.sample_every_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` from a daemon thread; returns the port (useful with port 0).

        A port that cannot be bound is a :class:`ConfigError`: the exporter has nothing else to do.
        """
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.metrics.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve lag metrics on {host}:{port} ({exc.strerror or exc}): another process has that port; "
                "set LEARNLOOP_LAG__METRICS_PORT to a free port"
            ) from None
        bound = int(self._server.server_port)
        log.info("lag exporter: metrics on http://%s:%d/metrics", host, bound)
        return bound

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
