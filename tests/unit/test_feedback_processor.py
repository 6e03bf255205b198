"""FeedbackProcessor over in-memory ports: records in, learning and output events out."""

from __future__ import annotations

import base64
import json
import pickle
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from learners.config import LearnersConfig
from learners.labels import Target
from learners.online import OnlineLearner
from schemas import DeadLetter, DriftEvent, Envelope, FeedbackEvent, PredictionEvent, RetrainRequest
from streams.feedback import BatchResult, FeedbackProcessor, PartitionState
from tests.reference import river_reference, sea_with_switch

TOPIC = "learnloop.feedback"
PREDICTIONS = "learnloop.predictions"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


class MemoryStore:
    """PartitionStateStore in a dict: snapshots, dedup ids and statuses per partition."""

    def __init__(self) -> None:
        self.snapshots: dict[tuple[str, int], tuple[bytes, int]] = {}
        self.ids: defaultdict[tuple[str, int], set[str]] = defaultdict(set)
        self.statuses: dict[str, Mapping[str, Any]] = {}

    async def load(self, topic: str, partition: int) -> bytes | None:
        got = self.snapshots.get((topic, partition))
        return got[0] if got else None

    async def seen(self, topic: str, partition: int, event_ids: Sequence[str]) -> list[bool]:
        known = self.ids[(topic, partition)]
        return [i in known for i in event_ids]

    async def commit(
        self,
        topic: str,
        partition: int,
        *,
        snapshot: bytes,
        offset: int,
        event_ids: Sequence[str],
        statuses: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self.snapshots[(topic, partition)] = (snapshot, offset)
        self.ids[(topic, partition)].update(event_ids)
        self.statuses.update(statuses)

    async def publish_progress(
        self,
        group: str,
        topic: str,
        partition: int,
        *,
        position: int,
        highwater: int | None,
        counters: Mapping[str, int] | None = None,
    ) -> None:
        pass


class MemoryJoins:
    """JoinStore in a dict (no TTL: tests control time through the clock instead)."""

    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}

    async def put_predictions(self, rows: Sequence[tuple[str, bytes]], *, ttl_s: int) -> None:
        self.rows.update(rows)

    async def get_predictions(self, prediction_ids: Sequence[str]) -> list[bytes | None]:
        return [self.rows.get(i) for i in prediction_ids]


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


SEA = LearnersConfig.from_mapping(
    {"strict": True, "learners": {"sea": {"task": "binary", "retrain_model": "sea-retrain"}}}
)


@dataclass
class Rig:
    processor: FeedbackProcessor
    store: MemoryStore
    joins: MemoryJoins
    clock: FakeClock
    state: PartitionState

    async def commit(self) -> None:
        """What the consumer does at a snapshot: ids move from the state into the store."""
        ids, self.state.uncommitted_ids = self.state.uncommitted_ids, []
        await self.store.commit(
            self.state.topic,
            self.state.partition,
            snapshot=pickle.dumps(self.state),
            offset=self.state.next_offset,
            event_ids=ids,
            statuses=self.state.statuses(),
        )


def rig(learners: LearnersConfig = SEA, **kw: Any) -> Rig:
    store, joins, clock = MemoryStore(), MemoryJoins(), FakeClock()
    processor = FeedbackProcessor(learners=learners, store=store, joins=joins, source="test", clock=clock, **kw)
    return Rig(processor, store, joins, clock, PartitionState(TOPIC, 0))


def feedback(**kw: Any) -> FeedbackEvent:
    fields: dict[str, Any] = {"source": "test", "learner": "sea", "features": {"x1": 1.0, "x2": 2.0}, "label": True}
    fields.update(kw)
    return FeedbackEvent(**fields)


def label_only(prediction_id: str, **kw: Any) -> FeedbackEvent:
    return feedback(features=None, prediction_id=prediction_id, **kw)


def prediction(prediction_id: str, **kw: Any) -> PredictionEvent:
    fields: dict[str, Any] = {
        "source": "test", "prediction_id": prediction_id, "learner": "sea",
        "features": {"x1": 7.0, "x2": -3.0}, "model_version": "1",
    }
    fields.update(kw)
    return PredictionEvent(**fields)


def records(
    items: Sequence[Envelope | bytes], *, start: int = 0, topic: str = TOPIC, partition: int = 0
) -> list[Record]:
    out = []
    for offset, item in enumerate(items, start):
        value = item if isinstance(item, bytes) else item.to_json()
        key = item.learner.encode() if isinstance(item, FeedbackEvent) else b"k"
        out.append(Record(topic, partition, offset, key, value))
    return out


def of_type(result: BatchResult, cls: type[Envelope]) -> list[Any]:
    return [e for e in result.outputs if isinstance(e, cls)]


# -- learning ------------------------------------------------------------------


async def test_valid_feedback_is_learned_and_counted() -> None:
    r = rig()
    events = [feedback(label=i % 2 == 0) for i in range(3)]
    result = await r.processor.process(r.state, records(events))
    assert (result.learned, result.outputs, result.duplicates) == (3, [], 0)
    assert r.state.offset == 2
    assert r.state.counters == Counter({"in": 3, "learned": 3})  # zero counts compare equal
    slot = r.state.slots["sea"]
    assert slot.learner.n_seen == 3
    assert slot.last_event_at == events[-1].occurred_at
    assert slot.learned_at == r.clock.now


# -- dead letters ---------------------------------------------------------------

UNMAPPED_SIGNAL = feedback(label=None, signal="wink").to_json()
BAD_RECORDS = [
    pytest.param(b"{not json", "invalid_json", id="invalid-json"),
    pytest.param(b'{"schema": "feedback/1", "source": "t", "learner": "sea", "label": 1}', "validation", id="no-input"),
    pytest.param(prediction("p").to_json(), "unexpected_schema", id="wrong-schema"),
    pytest.param(feedback(learner="ghost").to_json(), "unknown_learner", id="unknown-learner"),
    pytest.param(UNMAPPED_SIGNAL, "unmappable_label", id="unmapped-signal"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_RECORDS)
async def test_bad_record_is_dead_lettered_and_the_batch_goes_on(bad: bytes, reason: str) -> None:
    r = rig()
    batch = records([feedback(), bad, feedback()])
    result = await r.processor.process(r.state, batch)
    assert result.learned == 2
    [dl] = result.outputs
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.source_topic, dl.partition, dl.offset) == (reason, TOPIC, 0, 1)
    assert base64.b64decode(dl.payload) == bad == dl.payload_bytes()
    assert dl.key == batch[1].key.decode()  # type: ignore[union-attr]
    assert dict(result.deadlettered) == {reason: 1}
    assert r.state.counters[f"deadletter:{reason}"] == 1
    assert r.state.offset == 2


async def test_dead_letter_ids_are_the_same_on_replay() -> None:
    batch = records([b"nope", b"[]"])
    first = [e.event_id for e in (await rig().processor.process(PartitionState(TOPIC, 0), batch)).outputs]
    again = [e.event_id for e in (await rig().processor.process(PartitionState(TOPIC, 0), batch)).outputs]
    assert len(set(first)) == 2
    assert first == again


async def test_tombstone_is_dead_lettered_with_an_empty_payload() -> None:
    r = rig()
    result = await r.processor.process(r.state, [Record(TOPIC, 0, 0, b"sea", None)])
    [dl] = result.outputs
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.payload_bytes()) == ("invalid_json", b"")


# -- duplicates and replays ---------------------------------------------------


async def test_duplicate_in_one_batch_is_dropped() -> None:
    r = rig()
    ev = feedback()
    result = await r.processor.process(r.state, records([ev, ev]))
    assert (result.learned, result.duplicates) == (1, 1)
    assert r.state.counters["duplicates"] == 1


async def test_duplicate_across_batches_is_dropped_before_commit() -> None:
    r = rig()
    ev = feedback()
    await r.processor.process(r.state, records([ev]))
    result = await r.processor.process(r.state, records([ev], start=1))
    assert (result.learned, result.duplicates) == (0, 1)
    assert r.state.uncommitted_ids == [str(ev.event_id)]


async def test_duplicates_across_chunks_and_a_failed_commit_are_still_dropped() -> None:
    r = rig()
    chunk = r.processor.CHUNK
    events = [feedback() for _ in range(chunk + 10)]
    # The first event again in the second chunk of the same batch, and in the next batch.
    result = await r.processor.process(r.state, records([*events, events[0]]))
    assert (result.learned, result.duplicates) == (chunk + 10, 1)
    result = await r.processor.process(r.state, records([events[1]], start=chunk + 11))
    assert (result.learned, result.duplicates) == (0, 1)
    # A commit that fails hands the ids back in a new list, as the consumer does.
    ids, r.state.uncommitted_ids = r.state.uncommitted_ids, []
    r.state.uncommitted_ids = ids + r.state.uncommitted_ids
    result = await r.processor.process(r.state, records([events[2], feedback()], start=chunk + 12))
    assert (result.learned, result.duplicates) == (1, 1)
    assert len(r.state.uncommitted_ids) == len(set(r.state.uncommitted_ids)) == chunk + 11


async def test_duplicate_after_commit_is_dropped_by_the_store() -> None:
    r = rig()
    ev = feedback()
    await r.processor.process(r.state, records([ev]))
    await r.commit()
    assert r.state.uncommitted_ids == []
    assert r.store.ids[(TOPIC, 0)] == {str(ev.event_id)}
    result = await r.processor.process(r.state, records([ev, feedback()], start=1))
    assert (result.learned, result.duplicates) == (1, 1)


async def test_refetched_offsets_are_skipped() -> None:
    r = rig()
    events = [feedback() for _ in range(4)]
    await r.processor.process(r.state, records(events[:3]))
    result = await r.processor.process(r.state, records(events))  # a seek back to 0 re-fetches 0..2
    assert (result.learned, result.duplicates) == (1, 0)
    assert r.state.offset == 3
    assert r.state.counters["in"] == 4
    assert r.state.slots["sea"].learner.n_seen == 4


async def test_replay_from_a_snapshot_ends_in_the_same_state() -> None:
    r = rig()
    events = [feedback(features={"x1": float(i), "x2": 1.0}, label=i % 3 == 0) for i in range(6)]
    await r.processor.process(r.state, records(events[:3]))
    await r.commit()
    snapshot = r.store.snapshots[(TOPIC, 0)][0]
    await r.processor.process(r.state, records(events[3:], start=3))

    restored: PartitionState = pickle.loads(snapshot)
    replay = await r.processor.process(restored, records(events))  # the consumer resumes at 0 after a crash
    assert replay.learned == 3
    assert restored.statuses() == r.state.statuses()
    assert restored.counters == r.state.counters


# -- joins --------------------------------------------------------------------


async def test_label_only_feedback_waits_for_its_prediction_and_learns_its_features() -> None:
    r = rig()
    pred = prediction("p1")
    fb = label_only("p1", label=True)
    result = await r.processor.process(r.state, records([fb]))
    assert (result.learned, result.outputs, len(r.state.pending)) == (0, [], 1)

    stored = await r.processor.store_predictions(records([pred], topic=PREDICTIONS))
    assert stored.outputs == []
    result = await r.processor.poll_pending(r.state)
    assert (result.learned, r.state.pending, r.state.counters["joined"]) == (1, [], 1)

    reference = OnlineLearner("sea", SEA.resolve("sea"))
    reference.learn_one(pred.features or {}, Target(True, 1.0))
    probe = {"x1": 1.0, "x2": 1.0}
    assert r.state.slots["sea"].learner.predict_proba_one(probe) == reference.predict_proba_one(probe)


async def test_a_large_batch_looks_each_waiting_prediction_up_once() -> None:
    r = rig()
    asked: list[str] = []
    lookup = r.joins.get_predictions

    async def counting(ids: Sequence[str]) -> list[bytes | None]:
        asked.extend(ids)
        return await lookup(ids)

    r.joins.get_predictions = counting  # type: ignore[method-assign]
    await r.processor.process(r.state, records([label_only("p0")]))
    asked.clear()
    # p0 waited before this batch; p1 arrives in its third chunk; neither prediction is stored.
    chunk = r.processor.CHUNK
    batch = [feedback() for _ in range(2 * chunk)] + [label_only("p1")] + [feedback() for _ in range(chunk)]
    result = await r.processor.process(r.state, records(batch, start=1))
    assert asked == ["p0", "p1"]  # once each, not once per chunk
    assert (result.learned, len(r.state.pending)) == (3 * chunk, 2)
    await r.joins.put_predictions([("p1", prediction("p1").to_json())], ttl_s=60)
    result = await r.processor.poll_pending(r.state)
    assert (result.learned, [p.event.prediction_id for p in r.state.pending]) == (1, ["p0"])


async def test_joined_feedback_is_released_by_the_next_batch_before_it() -> None:
    r = rig()
    await r.processor.process(r.state, records([label_only("p1")]))
    await r.processor.store_predictions(records([prediction("p1")], topic=PREDICTIONS))
    later = feedback()
    result = await r.processor.process(r.state, records([later], start=1))
    assert result.learned == 2
    assert r.state.slots["sea"].last_event_at == later.occurred_at  # the joined one was learned first


async def test_prediction_stored_before_its_feedback_joins_at_once() -> None:
    r = rig()
    await r.processor.store_predictions(records([prediction("p1")], topic=PREDICTIONS))
    result = await r.processor.process(r.state, records([label_only("p1")]))
    assert (result.learned, r.state.pending) == (1, [])


async def test_invalid_prediction_is_dead_lettered_and_not_stored() -> None:
    r = rig()
    result = await r.processor.store_predictions(records([b"{", prediction("p2")], topic=PREDICTIONS))
    [dl] = result.outputs
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.source_topic, dl.offset, dl.payload_bytes()) == ("invalid_json", PREDICTIONS, 0, b"{")
    assert list(r.joins.rows) == ["p2"]


async def test_feedback_without_prediction_is_orphaned_after_the_wait() -> None:
    r = rig(orphan_wait_s=60.0)
    fb = label_only("never")
    batch = records([fb])
    await r.processor.process(r.state, batch)
    r.clock.now += 59.0
    assert (await r.processor.poll_pending(r.state)).outputs == []
    r.clock.now += 1.0
    result = await r.processor.poll_pending(r.state)
    [dl] = result.outputs
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.offset, dl.payload_bytes()) == ("orphaned", 0, batch[0].value)
    assert r.state.pending == []
    assert r.state.counters["deadletter:orphaned"] == 1


async def test_too_many_orphans_drop_the_oldest() -> None:
    r = rig(orphan_max=2)
    result = await r.processor.process(r.state, records([label_only(f"p{i}") for i in range(3)]))
    assert [(dl.reason, dl.offset) for dl in of_type(result, DeadLetter)] == [("orphaned", 0)]
    assert [p.record.offset for p in r.state.pending] == [1, 2]


async def test_prediction_of_another_learner_is_a_join_mismatch() -> None:
    r = rig(learners=LearnersConfig())
    await r.processor.store_predictions(records([prediction("p1", learner="other")], topic=PREDICTIONS))
    result = await r.processor.process(r.state, records([label_only("p1")]))
    [dl] = result.outputs
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.offset, result.learned) == ("join_mismatch", 0, 0)
    assert r.state.pending == []


# -- drift --------------------------------------------------------------------

STREAM = sea_with_switch(2000, 2000)


def sea_events() -> list[FeedbackEvent]:
    return [feedback(features=x, label=y) for x, y in STREAM]


async def run_stream(
    events: list[FeedbackEvent], batch_size: int, learners: LearnersConfig = SEA
) -> list[Envelope]:
    r = rig(learners=learners)
    batch = records(events)
    outputs: list[Envelope] = []
    for i in range(0, len(batch), batch_size):
        outputs += (await r.processor.process(r.state, batch[i : i + batch_size])).outputs
    return outputs


async def test_each_drift_gives_one_drift_event_and_one_retrain_request() -> None:
    outputs = await run_stream(sea_events(), batch_size=500)
    drifts = [e for e in outputs if isinstance(e, DriftEvent)]
    retrains = [e for e in outputs if isinstance(e, RetrainRequest)]
    assert [d.n_seen for d in drifts] == river_reference(STREAM).drifts
    assert drifts, "the switch should drift"
    assert len(outputs) == 2 * len(drifts)
    for drift, retrain in zip(drifts, retrains, strict=True):
        assert retrain.drift_event_id == drift.event_id
        assert (retrain.model, retrain.learner, retrain.reason) == ("sea-retrain", "sea", "drift")
        assert drift.learner == "sea"


async def test_a_learner_without_retrain_model_sends_drift_events_but_asks_for_no_retrain() -> None:
    no_retrain = LearnersConfig.from_mapping({"strict": True, "learners": {"sea": {"task": "binary"}}})
    outputs = await run_stream(sea_events(), batch_size=500, learners=no_retrain)
    drifts = [e for e in outputs if isinstance(e, DriftEvent)]
    assert [d.n_seen for d in drifts] == river_reference(STREAM).drifts
    assert drifts, "the switch should drift"
    assert outputs == drifts  # no RetrainRequest: there is no model to rebuild


async def test_drift_ids_are_deterministic_across_runs_and_batch_sizes() -> None:
    events = sea_events()

    def ids(outputs: list[Envelope]) -> list[tuple[str, object, object]]:
        return [(type(e).__name__, e.event_id, getattr(e, "request_id", None)) for e in outputs]

    first = ids(await run_stream(events, batch_size=500))
    assert first
    assert ids(await run_stream(events, batch_size=500)) == first
    assert ids(await run_stream(events, batch_size=4000)) == first


# -- state ----------------------------------------------------------------------


async def test_partition_state_pickles_and_statuses_are_json() -> None:
    r = rig()
    events = [feedback(features=x, label=y) for x, y in STREAM[:200]]
    await r.processor.process(r.state, records([*events, label_only("p9"), b"oops"]))
    copy: PartitionState = pickle.loads(pickle.dumps(r.state))
    assert copy.statuses() == r.state.statuses()
    assert (copy.offset, copy.counters) == (r.state.offset, r.state.counters)
    assert copy.uncommitted_ids == r.state.uncommitted_ids
    assert [p.event for p in copy.pending] == [p.event for p in r.state.pending]
    statuses = r.state.statuses()
    assert json.loads(json.dumps(statuses, allow_nan=False)) == statuses
    assert statuses["sea"]["n_learned"] == len(events)
