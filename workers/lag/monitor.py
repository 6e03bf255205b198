"""One view of consumer lag: offsets per group and partition, time lag, Burrow statuses, model freshness.

A :class:`LagMonitor` turns samples of the broker into a :class:`LagView`. It
keeps, across samples, the offset history of each partition (for interpolated
time lag) and the commit window of each group's partition (for Burrow's
statuses), so the exporter calls :meth:`LagMonitor.sample` on a timer and the
one-shot CLI calls it a few times in a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from aiokafka import TopicPartition

from schemas.envelope import rfc3339
from workers.lag.config import LagConfig
from workers.lag.freshness import Freshness, event_time, learner_freshness
from workers.lag.history import OffsetHistory, record_time_lag
from workers.lag.offsets import GroupInfo, OffsetSource, Probe
from workers.lag.status import CommitWindow, Status, group_status

log = logging.getLogger(__name__)

TimeLagMethod = Literal["interpolated", "record"]
LearnerSource = Callable[[], Awaitable[list[dict[str, Any]]]]
# Progress rows as RedisStore.progress() returns them: group, topic, partition, position, updated_at, ...
ProgressSource = Callable[[], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class PartitionRow:
    """One line of ``kafka-consumer-groups --describe``, plus time lag and Burrow's partition status."""

    group: str
    topic: str
    partition: int
    current_offset: int | None  # None: the group never committed here (LAG "-")
    log_end_offset: int | None  # None: the broker did not answer the probe in time
    lag: int | None
    consumer_id: str | None
    host: str | None
    client_id: str | None
    time_lag_s: float | None
    status: Status
    failure: str | None = None  # why the worker stopped processing the partition, in its words
    failure_reason: str | None = None  # the same as a short tag (snapshot_signature, ...)

    def as_json(self) -> dict[str, Any]:
        return {
            "group": self.group, "topic": self.topic, "partition": self.partition,
            "current_offset": self.current_offset, "log_end_offset": self.log_end_offset, "lag": self.lag,
            "consumer_id": self.consumer_id, "host": self.host, "client_id": self.client_id,
            "time_lag_s": self.time_lag_s, "status": self.status.value,
            "failure": self.failure, "failure_reason": self.failure_reason,
        }


@dataclass(frozen=True)
class GroupRow:
    group: str
    status: Status  # OK, WARN or ERR: the worst of its partitions
    state: str  # the broker's group state (Stable, Empty, ...)
    members: int
    partitions: int
    total_lag: int
    max_time_lag_s: float | None
    complete: float  # Burrow's completeness: the share of partitions with a full commit window

    def as_json(self) -> dict[str, Any]:
        return {
            "group": self.group, "status": self.status.value, "state": self.state, "members": self.members,
            "partitions": self.partitions, "total_lag": self.total_lag, "max_time_lag_s": self.max_time_lag_s,
            "complete": self.complete,
        }


@dataclass(frozen=True)
class LagView:
    time: float
    partitions: list[PartitionRow]
    groups: list[GroupRow]
    learners: list[Freshness]

    def as_json(self) -> dict[str, Any]:
        return {
            "sampled_at": rfc3339(self.time),
            "partitions": [r.as_json() for r in self.partitions],
            "groups": [g.as_json() for g in self.groups],
            "learners": [f.as_json() for f in self.learners],
        }


class LagMonitor:
    """Samples groups' lag; remembers what Burrow's rules and time-lag interpolation need between samples.

    ``known`` maps learnloop's own group ids to the topics they consume, so their
    partitions show (with LAG "-") before anything is committed. ``progress``
    reads the heartbeats workers publish to Redis: where a (group, partition) has
    one, it decides whether a live consumer is committing (see status.py), not
    the group's membership; where the worker recorded a failure instead, the
    partition is not live and its row says why. ``time_lag``
    picks the method: ``"interpolated"`` from the offset history, the exact
    record timestamp where the history must extrapolate; ``"record"`` the
    record timestamp first (one extra fetch per lagging partition), the history
    only where it brackets the offset, else unknown: never the lower bound a
    short table extrapolates to.
    """

    def __init__(
        self,
        reader: OffsetSource,
        config: LagConfig,
        *,
        known: Mapping[str, Sequence[str]] | None = None,
        learners: LearnerSource | None = None,
        progress: ProgressSource | None = None,
        time_lag: TimeLagMethod = "interpolated",
    ) -> None:
        self.reader = reader
        self.config = config
        self.known = {g: list(ts) for g, ts in (known or {}).items()}
        self.learners = learners
        self.progress = progress
        self.time_lag = time_lag
        self.histories: dict[TopicPartition, OffsetHistory] = {}
        self.windows: dict[tuple[str, TopicPartition], CommitWindow] = {}

    async def sample(self, groups: Sequence[str] | None = None, *, now: float | None = None) -> LagView:
        """Read the broker once. ``groups``: only these (else the configured ones, else all)."""
        now = time.time() if now is None else now
        topics = await self.reader.topics()
        explicit = list(dict.fromkeys(groups or self.config.groups))
        listed = set() if explicit else set(await self.reader.groups())
        names = explicit or sorted(set(self.known) | listed)
        all_tps = [TopicPartition(t, p) for t, parts in topics.items() for p in parts]
        committed = {g: await self.reader.committed(g, all_tps) for g in names}
        infos = await self.reader.describe(names)

        shown: dict[str, list[TopicPartition]] = {}
        for g in names:
            info = infos.get(g) or GroupInfo(g, "Unknown")
            mine = {tp.topic for tp, off in committed[g].items() if off is not None}
            mine |= {tp.topic for tp in info.owners}
            mine |= {t for t in self.known.get(g, ()) if t in topics}
            has_commits = any(off is not None for off in committed[g].values())
            if g in explicit or g in listed or has_commits:
                shown[g] = [TopicPartition(t, p) for t in sorted(mine) for p in topics.get(t, [])]

        statuses = await self._learner_statuses()
        learner_tps = {tp for st in statuses if (tp := _learner_tp(st)) is not None and tp.topic in topics}
        positions = self._positions(shown, committed, learner_tps)
        probes = await self.reader.probe(positions)
        for tp, pr in probes.items():
            self.histories.setdefault(tp, OffsetHistory(self.config.history)).add(now, pr.log_end)

        record_ts = await self._record_timestamps(shown, committed, positions, probes)
        beats, failures = await self._heartbeats()
        rows: list[PartitionRow] = []
        group_rows: list[GroupRow] = []
        for g, tps in shown.items():
            info = infos.get(g) or GroupInfo(g, "Unknown")
            g_rows = [
                self._row(g, tp, info, self._live(info, beats.get((g, tp)), tp), committed[g][tp], probes.get(tp),
                          record_ts.get((g, tp)), now, failures.get((g, tp)))
                for tp in tps
            ]
            rows.extend(g_rows)
            group_rows.append(self._group_row(g, info, g_rows))
        self._forget(shown, positions)
        learners = await self._freshness(statuses, probes)
        return LagView(now, rows, group_rows, learners)

    # -- pieces of a sample ------------------------------------------------------------

    def _positions(
        self,
        shown: Mapping[str, list[TopicPartition]],
        committed: Mapping[str, Mapping[TopicPartition, int | None]],
        extra: set[TopicPartition],
    ) -> dict[TopicPartition, int]:
        # Probing at a committed offset fetches the first unconsumed record along with the high watermark.
        positions: dict[TopicPartition, int] = {}
        for g, tps in shown.items():
            for tp in tps:
                off = committed[g][tp]
                if off is not None:
                    positions[tp] = min(positions.get(tp, off), off)
        for tp in [tp for tps in shown.values() for tp in tps] + sorted(extra):
            if tp not in positions:
                last = self.histories[tp].latest if tp in self.histories else None
                positions[tp] = max(0, last.offset - 1) if last is not None else 0  # a small read near the end
        return positions

    async def _record_timestamps(
        self,
        shown: Mapping[str, list[TopicPartition]],
        committed: Mapping[str, Mapping[TopicPartition, int | None]],
        positions: Mapping[TopicPartition, int],
        probes: Mapping[TopicPartition, Probe],
    ) -> dict[tuple[str, TopicPartition], int | None]:
        out: dict[tuple[str, TopicPartition], int | None] = {}
        todo: dict[TopicPartition, set[int]] = {}
        for g, tps in shown.items():
            for tp in tps:
                off, pr = committed[g][tp], probes.get(tp)
                if off is None or pr is None or off >= pr.log_end:
                    continue
                if positions[tp] == off:
                    out[(g, tp)] = pr.timestamp_ms
                elif self.time_lag == "record" or self._extrapolates(tp, off):
                    todo.setdefault(tp, set()).add(off)
        # Groups at different offsets of one partition: one more fetch round per distinct offset.
        while todo:
            round_ = {tp: min(offs) for tp, offs in todo.items()}
            got = await self.reader.probe(round_)
            for tp, off in round_.items():
                ts = got[tp].timestamp_ms if tp in got else None
                for g, tps in shown.items():
                    if tp in tps and committed[g][tp] == off:
                        out[(g, tp)] = ts
                todo[tp].discard(off)
            todo = {tp: offs for tp, offs in todo.items() if offs}
        return out

    def _row(
        self,
        group: str,
        tp: TopicPartition,
        info: GroupInfo,
        live: bool,
        committed: int | None,
        probe: Probe | None,
        record_ts_ms: int | None,
        now: float,
        failure: tuple[str, str] | None = None,
    ) -> PartitionRow:
        log_end = probe.log_end if probe is not None else None
        lag = max(0, log_end - committed) if log_end is not None and committed is not None else None
        window = self.windows.setdefault((group, tp), CommitWindow(self.config.window))
        if log_end is not None:
            window.observe(now, committed=committed, log_end=log_end, live=live)
        owner = info.owners.get(tp)
        return PartitionRow(
            group=group, topic=tp.topic, partition=tp.partition,
            current_offset=committed, log_end_offset=log_end, lag=lag,
            consumer_id=owner.consumer_id if owner else None,
            host=(owner.host or None) if owner else None,
            client_id=(owner.client_id or None) if owner else None,
            time_lag_s=self._time_lag(tp, committed, lag, record_ts_ms, now),
            status=window.status(now),
            failure=failure[1] if failure else None,
            failure_reason=failure[0] if failure else None,
        )

    def _live(self, info: GroupInfo, beat: float | None, tp: TopicPartition) -> bool:
        if beat is None:
            return info.live(tp)
        # Wall clock on purpose: heartbeats carry real time even when a caller evaluates at another ``now``.
        return time.time() - beat <= self.config.heartbeat_timeout_s

    def _time_lag(
        self, tp: TopicPartition, committed: int | None, lag: int | None, record_ts_ms: int | None, now: float
    ) -> float | None:
        if lag is None or committed is None:
            return None
        if lag == 0:
            return 0.0
        exact = record_time_lag(lag, record_ts_ms, now)
        history = self.histories.get(tp)
        p = history.predict(committed) if history is not None else None
        if p is None:
            return exact
        interpolated = max(0.0, now - p.time)
        if exact is not None and (self.time_lag == "record" or p.extrapolated):
            return exact
        if not p.extrapolated or self.time_lag == "interpolated":
            return interpolated
        # Record mode without the record: a table that must extrapolate only bounds the lag from below
        # (a flat one says "at least since the first sample", 2 s in a one-shot run), which is no value.
        return None

    def _extrapolates(self, tp: TopicPartition, committed: int) -> bool:
        history = self.histories.get(tp)
        p = history.predict(committed) if history is not None else None
        return p is None or p.extrapolated

    def _group_row(self, group: str, info: GroupInfo, rows: list[PartitionRow]) -> GroupRow:
        windows = [self.windows[(group, TopicPartition(r.topic, r.partition))] for r in rows]
        with_commits = [w for w in windows if w.commits]
        time_lags = [r.time_lag_s for r in rows if r.time_lag_s is not None]
        return GroupRow(
            group=group,
            status=group_status([r.status for r in rows]),
            state=info.state,
            members=len(info.members),
            partitions=len(rows),
            total_lag=sum(r.lag for r in rows if r.lag is not None),
            max_time_lag_s=max(time_lags) if time_lags else None,
            complete=(sum(1 for w in with_commits if w.complete >= 1.0) / len(with_commits)) if with_commits else 0.0,
        )

    def _forget(self, shown: Mapping[str, list[TopicPartition]], positions: Mapping[TopicPartition, int]) -> None:
        # Bounded memory in a long-running exporter: groups and partitions that went away are dropped.
        keep = {(g, tp) for g, tps in shown.items() for tp in tps}
        for key in [k for k in self.windows if k not in keep]:
            del self.windows[key]
        for tp in [tp for tp in self.histories if tp not in positions]:
            del self.histories[tp]

    async def _heartbeats(
        self,
    ) -> tuple[dict[tuple[str, TopicPartition], float], dict[tuple[str, TopicPartition], tuple[str, str]]]:
        """Heartbeats by (group, partition), and the (reason, message) of partitions their worker gave up."""
        beats: dict[tuple[str, TopicPartition], float] = {}
        failures: dict[tuple[str, TopicPartition], tuple[str, str]] = {}
        for row in await self.progress() if self.progress is not None else []:
            try:
                key = (str(row["group"]), TopicPartition(str(row["topic"]), int(row["partition"])))
                if row.get("failure"):
                    # The worker stopped on this partition: no longer a heartbeat, whatever its age.
                    failures[key] = (str(row.get("failure_reason") or "failed"), str(row["failure"]))
                    beats[key] = 0.0
                else:
                    beats[key] = float(row["updated_at"])
            except (KeyError, TypeError, ValueError):
                log.debug("ignoring a malformed progress row %r", row)
        return beats, failures

    async def _learner_statuses(self) -> list[dict[str, Any]]:
        return await self.learners() if self.learners is not None else []

    async def _freshness(
        self, statuses: list[dict[str, Any]], probes: Mapping[TopicPartition, Probe]
    ) -> list[Freshness]:
        if not statuses:
            return []
        # The newest event produced on each learner's partition: the record just before the log end.
        newest_at = {tp: pr.log_end - 1 for tp, pr in probes.items() if pr.log_end > 0}
        wanted = {tp: newest_at[tp] for st in statuses if (tp := _learner_tp(st)) is not None and tp in newest_at}
        got = await self.reader.probe(wanted)
        newest: dict[TopicPartition, datetime | None] = {
            tp: event_time(pr.value, pr.timestamp_ms) if pr.offset is not None else None for tp, pr in got.items()
        }
        out = []
        for st in statuses:
            tp = _learner_tp(st)
            pr = probes.get(tp) if tp is not None else None
            out.append(learner_freshness(
                st,
                log_end=pr.log_end if pr is not None else None,
                newest_event_at=newest.get(tp) if tp is not None else None,
                bound_s=self.config.freshness_bound_s,
            ))
        return sorted(out, key=lambda f: f.learner)


def _learner_tp(status: Mapping[str, Any]) -> TopicPartition | None:
    topic, partition = status.get("topic"), status.get("partition")
    if isinstance(topic, str) and isinstance(partition, int) and not isinstance(partition, bool):
        return TopicPartition(topic, partition)
    return None
