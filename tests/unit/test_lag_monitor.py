"""The lag monitor against an in-memory broker: rows, time-lag methods, group selection, freshness."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition

from workers.lag.config import LagConfig
from workers.lag.monitor import LagMonitor, TimeLagMethod
from workers.lag.offsets import GroupInfo, Member, Probe
from workers.lag.status import Status

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeBroker:
    """Partitions are lists of (timestamp_ms, value); groups are dicts of committed offsets."""

    def __init__(self) -> None:
        self.logs: dict[TopicPartition, list[tuple[int, bytes]]] = {TP0: [], TP1: []}
        self.offsets: dict[str, dict[TopicPartition, int]] = {}
        self.infos: dict[str, GroupInfo] = {}
        self.probes: list[dict[TopicPartition, int]] = []

    def produce(self, tp: TopicPartition, n: int, ts_ms: int, value: bytes = b"{}") -> None:
        self.logs[tp].extend((ts_ms, value) for _ in range(n))

    async def topics(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for tp in self.logs:
            out.setdefault(tp.topic, []).append(tp.partition)
        return out

    async def groups(self) -> list[str]:
        return sorted(self.offsets)

    async def committed(self, group: str, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: self.offsets.get(group, {}).get(tp) for tp in tps}

    async def describe(self, groups: Sequence[str]) -> dict[str, GroupInfo]:
        return {g: self.infos.get(g, GroupInfo(g, "Empty")) for g in groups}

    async def probe(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, Probe]:
        self.probes.append(dict(positions))
        out = {}
        for tp, pos in positions.items():
            log = self.logs[tp]
            rec = log[pos] if pos < len(log) else None
            out[tp] = Probe(len(log), pos if rec else None, rec[0] if rec else None, rec[1] if rec else None)
        return out


def monitor(broker: FakeBroker, method: TimeLagMethod = "interpolated", **kw: Any) -> LagMonitor:
    return LagMonitor(broker, LagConfig(**kw), time_lag=method)


async def test_rows_are_offsets_and_dash_where_nothing_is_committed() -> None:
    b = FakeBroker()
    b.produce(TP0, 137, 1_000)
    b.produce(TP1, 20, 1_000)
    b.offsets["g"] = {TP0: 42}
    view = await monitor(b).sample(["g"], now=10.0)
    rows = {r.partition: r for r in view.partitions}
    assert (rows[0].current_offset, rows[0].log_end_offset, rows[0].lag) == (42, 137, 95)
    assert (rows[1].current_offset, rows[1].log_end_offset, rows[1].lag, rows[1].time_lag_s) == (None, 20, None, None)
    assert rows[1].status is Status.OK
    assert view.groups[0].total_lag == 95 and view.groups[0].partitions == 2
    json.dumps(view.as_json())  # serialisable as is


async def test_first_probe_reads_the_record_at_the_committed_offset() -> None:
    b = FakeBroker()
    b.produce(TP0, 10, 1_000)
    b.produce(TP0, 10, 4_000)
    b.offsets["g"] = {TP0: 12}
    view = await monitor(b, "record").sample(["g"], now=10.0)
    assert b.probes[0][TP0] == 12
    assert view.partitions[0].time_lag_s == 6.0  # the record at 12 was produced at t=4 s


async def test_groups_at_different_offsets_get_one_probe_round_each_in_record_mode() -> None:
    b = FakeBroker()
    b.produce(TP0, 10, 1_000)
    b.produce(TP0, 10, 4_000)
    b.offsets = {"a": {TP0: 5}, "b": {TP0: 15}}
    view = await monitor(b, "record").sample(["a", "b"], now=10.0)
    lags = {(r.group, r.partition): r.time_lag_s for r in view.partitions}
    assert lags[("a", 0)] == 9.0 and lags[("b", 0)] == 6.0
    assert {TP0: 15} in b.probes


async def test_interpolated_uses_the_history_and_the_record_only_to_avoid_extrapolating() -> None:
    b = FakeBroker()
    b.offsets["g"] = {TP0: 0}
    m = monitor(b)
    b.produce(TP0, 100, 0)  # timestamps deliberately wrong: the history must win where it can
    v = await m.sample(["g"], now=100.0)
    assert v.partitions[0].time_lag_s == 100.0  # one history point: the record timestamp
    b.produce(TP0, 100, 0)
    b.offsets["g"] = {TP0: 150}
    v = await m.sample(["g"], now=110.0)
    # history (100 s: 100), (110 s: 200): offset 150 was the log end at 105 s
    assert v.partitions[0].time_lag_s == 5.0


async def test_caught_up_is_zero_time_lag() -> None:
    b = FakeBroker()
    b.produce(TP0, 5, 1_000)
    b.offsets["g"] = {TP0: 5}
    v = await monitor(b, "record").sample(["g"], now=99.0)
    assert (v.partitions[0].lag, v.partitions[0].time_lag_s) == (0, 0.0)


async def test_default_selection_is_known_and_listed_groups_with_something_to_show() -> None:
    b = FakeBroker()
    b.produce(TP0, 3, 1_000)
    b.offsets = {"listed": {TP0: 1}}
    m = LagMonitor(b, LagConfig(), known={"mine": ["t"], "absent": ["nope"]})
    v = await m.sample(now=1.0)
    assert [g.group for g in v.groups] == ["listed"]  # known groups with no offsets and no members stay out
    v = await m.sample(["mine"], now=2.0)  # ... unless asked for: their known topics show with LAG "-"
    assert [(r.group, r.partition, r.lag) for r in v.partitions] == [("mine", 0, None), ("mine", 1, None)]


async def test_configured_groups_restrict_the_view() -> None:
    b = FakeBroker()
    b.offsets = {"a": {TP0: 0}, "b": {TP0: 0}}
    v = await monitor(b, groups=["b"]).sample(now=1.0)
    assert [g.group for g in v.groups] == ["b"]


async def test_owners_fill_the_member_columns() -> None:
    b = FakeBroker()
    b.produce(TP0, 3, 1_000)
    b.offsets["g"] = {TP0: 1}
    owner = Member("c-1", "10.0.0.7", "learnloop-feedback")
    b.infos["g"] = GroupInfo("g", "Stable", (owner,), {TP0: owner})
    v = await monitor(b).sample(["g"], now=1.0)
    r0, r1 = v.partitions
    assert (r0.consumer_id, r0.host, r0.client_id) == ("c-1", "10.0.0.7", "learnloop-feedback")
    assert r1.consumer_id is None
    assert v.groups[0].members == 1 and v.groups[0].state == "Stable"


async def test_statuses_follow_the_samples() -> None:
    b = FakeBroker()
    b.produce(TP0, 100, 1_000)
    b.offsets["g"] = {TP0: 10}
    b.infos["g"] = GroupInfo("g", "Stable", (Member("c", "", ""),))
    m = monitor(b, window=3)
    for t in (0.0, 5.0, 10.0):
        v = await m.sample(["g"], now=t)
    assert v.partitions[0].status is Status.STALL and v.groups[0].status is Status.ERR
    assert v.groups[0].complete == 1.0


async def test_state_of_vanished_partitions_is_forgotten() -> None:
    b = FakeBroker()
    b.offsets["g"] = {TP0: 0}
    m = monitor(b)
    await m.sample(["g"], now=1.0)
    assert (("g", TP0) in m.windows) and TP0 in m.histories
    del b.logs[TP0], b.logs[TP1]
    b.offsets.clear()
    await m.sample(["g"], now=2.0)
    assert not m.windows and not m.histories


async def test_freshness_reads_the_newest_record_of_each_learner_partition() -> None:
    b = FakeBroker()
    b.produce(TP1, 9, 1_000, b'{"occurred_at": "2026-01-01T00:00:00+00:00"}')
    b.produce(TP1, 1, 1_000, b'{"occurred_at": "2026-01-01T00:00:30+00:00"}')

    async def statuses() -> list[dict[str, Any]]:
        return [
            {"name": "b", "topic": "t", "partition": 1, "offset": 4, "last_event_at": "2026-01-01T00:00:00Z"},
            {"name": "a", "topic": "t", "partition": 1, "offset": 9, "last_event_at": "2026-01-01T00:00:00Z"},
            {"name": "gone", "topic": "elsewhere", "partition": 0, "offset": 0},
        ]

    m = LagMonitor(b, LagConfig(freshness_bound_s=10), learners=statuses)
    v = await m.sample(["nobody"], now=1.0)
    by = {f.learner: f for f in v.learners}
    assert [f.learner for f in v.learners] == ["a", "b", "gone"]
    assert (by["a"].behind, by["a"].freshness_s) == (0, 0.0)
    assert (by["b"].behind, by["b"].freshness_s, by["b"].stale) == (5, 30.0, True)
    assert by["gone"].freshness_s is None


@pytest.mark.parametrize("method", ["interpolated", "record"])
async def test_no_answer_for_a_partition_leaves_it_unknown(method: TimeLagMethod) -> None:
    class Silent(FakeBroker):
        async def probe(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, Probe]:
            return {}

    b = Silent()
    b.offsets["g"] = {TP0: 3}
    v = await monitor(b, method).sample(["g"], now=1.0)
    r = v.partitions[0]
    assert (r.current_offset, r.log_end_offset, r.lag, r.time_lag_s, r.status) == (3, None, None, None, Status.OK)


class Recordless(FakeBroker):
    """Answers with the high watermark but no record, as a broker does when the record stays unread."""

    async def probe(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, Probe]:
        return {tp: Probe(pr.log_end) for tp, pr in (await super().probe(positions)).items()}


async def test_record_mode_without_the_record_is_unknown_not_the_span_of_its_own_samples() -> None:
    # The one-shot CLI: three samples 1 s apart, nothing produced, the record 375 s old unread. The flat
    # offset history only says "at least since the first sample": it used to be shown as the time lag.
    b = Recordless()
    b.produce(TP0, 100, 1_000)
    b.offsets["g"] = {TP0: 37}
    m = monitor(b, "record")
    for t in (376.0, 377.0, 378.1):
        v = await m.sample(["g"], now=t)
    assert (v.partitions[0].lag, v.partitions[0].time_lag_s) == (63, None)


async def test_record_mode_falls_back_to_the_history_where_it_brackets_the_offset() -> None:
    b = Recordless()
    b.offsets["g"] = {TP0: 15}
    m = monitor(b, "record")
    b.produce(TP0, 10, 0)
    await m.sample(["g"], now=100.0)
    b.produce(TP0, 10, 0)
    v = await m.sample(["g"], now=110.0)  # the log end passed 15 at 105 s
    assert v.partitions[0].time_lag_s == 5.0


async def test_interpolated_mode_reads_the_record_where_the_history_must_extrapolate() -> None:
    b = FakeBroker()
    b.produce(TP0, 100, 25_000)
    b.offsets = {"a": {TP0: 10}, "b": {TP0: 40}}
    m = monitor(b)
    await m.sample(["a", "b"], now=100.0)
    v = await m.sample(["a", "b"], now=101.0)
    lags = {r.group: r.time_lag_s for r in v.partitions if r.partition == 0}
    # Flat history: extrapolating would claim 1 s; both records are 76 s old, b's read in a second round.
    assert lags == {"a": 76.0, "b": 76.0}
    assert {TP0: 40} in b.probes


async def test_a_fresh_heartbeat_makes_a_partition_live_whatever_the_membership() -> None:
    b = FakeBroker()
    b.produce(TP0, 100, 1_000)
    b.offsets["g"] = {TP0: 10}
    beats: list[dict[str, Any]] = []

    async def progress() -> list[dict[str, Any]]:
        return beats

    m = LagMonitor(b, LagConfig(window=3, heartbeat_timeout_s=60), progress=progress)
    beats.append({"group": "g", "topic": "t", "partition": 0, "updated_at": time.time()})
    beats.append({"group": "g", "topic": "t", "partition": "not a number", "updated_at": 0})  # ignored
    for t in (0.0, 5.0, 10.0):
        v = await m.sample(["g"], now=t)
    assert v.partitions[0].status is Status.STALL  # Empty group, but the worker is there and stuck


async def test_a_stale_heartbeat_outweighs_a_ghost_member() -> None:
    b = FakeBroker()
    b.produce(TP0, 100, 1_000)
    b.offsets["g"] = {TP0: 10}
    b.infos["g"] = GroupInfo("g", "Stable", (Member("ghost", "", ""),))

    async def progress() -> list[dict[str, Any]]:
        return [{"group": "g", "topic": "t", "partition": 0, "updated_at": time.time() - 120}]

    m = LagMonitor(b, LagConfig(window=3, heartbeat_timeout_s=60), progress=progress)
    for t in (0.0, 5.0, 10.0):
        v = await m.sample(["g"], now=t)
    assert v.partitions[0].status is Status.STOP


async def test_a_failure_the_worker_recorded_stops_the_partition_and_says_why() -> None:
    b = FakeBroker()
    b.produce(TP0, 100, 1_000)
    b.offsets["g"] = {TP0: 10}
    b.infos["g"] = GroupInfo("g", "Stable", (Member("ghost", "", ""),))  # a member that never left (Tansu)
    why = "cannot restore t partition 0 (learner sea): snapshot signature does not verify"

    async def progress() -> list[dict[str, Any]]:
        return [{"group": "g", "topic": "t", "partition": 0, "updated_at": time.time(), "failure": why,
                 "failure_reason": "snapshot_signature"}]

    m = LagMonitor(b, LagConfig(window=3, heartbeat_timeout_s=60), progress=progress)
    for t in (0.0, 5.0):
        v = await m.sample(["g"], now=t)
    r = v.partitions[0]
    assert (r.status, r.failure, r.failure_reason) == (Status.STOP, why, "snapshot_signature")
    assert r.as_json()["failure_reason"] == "snapshot_signature"
