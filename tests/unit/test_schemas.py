"""The wire format: round trips, the rules, the limits, the errors, the JSON Schema export."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field, ValidationError

from schemas import (
    EVENT_MODELS,
    MAX_COMMENT,
    MAX_FEATURES,
    MAX_TEXT,
    NAME_PATTERN,
    TAG_PATTERN,
    TOPIC_EVENTS,
    ConversationEvent,
    DataWindow,
    DeadLetter,
    DriftEvent,
    DriftEventV2,
    EntityRef,
    Envelope,
    ErrorInfo,
    FeedbackEvent,
    InvalidEvent,
    KnowledgeUpdate,
    Lineage,
    ModelUpdate,
    PredictionEvent,
    RelationRef,
    RetrainRequest,
    RolloutEvent,
    WindowStats,
    export_json_schemas,
    parse_event,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SAMPLES: list[Envelope] = [
    FeedbackEvent(source="web", learner="ctr", features={"price": 9.5, "mobile": True}, label=1),
    PredictionEvent(source="web", prediction_id="p-1", learner="ctr", text="hi", prediction="spam", model_version="7"),
    ConversationEvent(source="chat", conversation_id="c-1", turn=2, role="assistant", text="Hello Ada."),
    DriftEvent(
        source="agent",
        learner="ctr",
        detector="adwin",
        metric="error",
        n_seen=1200,
        before=WindowStats(n=1000, mean=0.1),
        after=WindowStats(n=200, mean=0.3),
        detected_at=T0,
        delta=0.2,
    ),
    DriftEventV2(
        source="agent",
        learner="ctr",
        kind="input",
        detector="psi",
        feature="plan",
        n_seen=1500,
        statistic=0.41,
        threshold=0.25,
        before={"n": 500, "share:free": 0.5},
        after={"n": 500, "share:free": 0.25},
        detected_at=T0,
    ),
    RetrainRequest(
        source="agent",
        model="ctr-text",
        reason="drift",
        drift_event_id=uuid.uuid4(),
        window=DataWindow(start=T0, end=T0 + timedelta(days=1), last_n=10),
    ),
    ModelUpdate(
        source="trainer",
        model="ctr-text",
        version="8",
        kind="fine-tuned",
        uri="models:/ctr-text/8",
        alias="champion",
        metrics={"f1": 0.9},
        lineage=Lineage(parent_version="7", data_window=DataWindow(last_n=5), n_samples=5, code_version="abc"),
    ),
    KnowledgeUpdate(
        source="agent",
        conversation_id="c-1",
        source_event_id=uuid.uuid4(),
        entities=[EntityRef(key="person:ada", name="Ada", label="PERSON")],
        relations=[
            RelationRef(subject="person:ada", predicate="knows", object="person:bob", confidence=0.8, validated=False)
        ],
    ),
    DeadLetter.from_record(
        topic="learnloop.feedback", partition=0, offset=7, key=b"k", value=b"{", error=ValueError("x"), source="agent"
    ),
    RolloutEvent(source="rollouts", model="sea-text", rollout_id="r1", state="running", mode="canary", step=1,
                 share=25.0, champion_version="3", challenger_version="4", reason="step 1 passed",
                 statistics={"difference_lower": -0.02}),
    PredictionEvent(source="gateway", prediction_id="p-1:shadow", learner="sea-text", text="hi", prediction=True,
                    model_version="4", model="sea-text", rollout_id="r1", arm="challenger", shadow_of="p-1",
                    latency_ms=3.5),
]


EVENT_ID = "0b6f1f7e-3c55-4f0e-9d1a-2f3b4c5d6e7f"
ENVELOPE = {"event_id": EVENT_ID, "occurred_at": "2024-05-01T12:00:00Z"}


def feedback(**fields: Any) -> dict[str, Any]:
    return {"schema": "feedback/1", **ENVELOPE, "source": "web", "learner": "ctr", **fields}


def reason_and_message(data: Any, expected: Any = None) -> tuple[str, str]:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(data, expected)
    return caught.value.reason, str(caught.value)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.SCHEMA_ID)
def test_every_event_round_trips_through_json_and_dict(event: Envelope) -> None:
    assert parse_event(event.to_json()) == event
    assert parse_event(event.to_dict(), type(event)) == event
    assert event.to_dict()["schema"] == event.SCHEMA_ID


def test_registries_cover_every_event() -> None:
    assert set(EVENT_MODELS) == {type(e).SCHEMA_ID for e in SAMPLES}
    assert {model for models in TOPIC_EVENTS.values() for model in models} == set(EVENT_MODELS.values())
    assert FeedbackEvent.SCHEMA_ID == "feedback/1"


def test_to_json_is_compact_with_wire_names() -> None:
    assert SAMPLES[0].to_json().startswith(b'{"schema":"feedback/1","event_id":"')


def test_events_are_frozen_and_closed() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        SAMPLES[0].source = "other"
    assert reason_and_message(feedback(text="x", label=1, colour="red"))[1] == "colour: Extra inputs are not permitted"


def test_schema_id_must_match_the_literal() -> None:
    with pytest.raises(TypeError, match="SCHEMA_ID"):

        class Broken(Envelope):
            SCHEMA_ID: ClassVar[str] = "broken/1"
            schema_: Literal["broke/1"] = Field(default="broke/1", alias="schema")


def test_naive_timestamp_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must carry a UTC offset"):
        FeedbackEvent(source="web", learner="ctr", text="x", label=1, occurred_at=datetime(2024, 5, 1))
    reason, message = reason_and_message(feedback(text="x", label=1, occurred_at="2024-05-01T12:00:00"))
    assert reason == "validation"
    assert message.startswith("occurred_at: must be an RFC 3339 date-time string with an offset")


def test_offset_is_kept() -> None:
    event = parse_event(feedback(text="x", label=1, occurred_at="2024-05-01T14:00:00+02:00"))
    assert event.occurred_at == T0
    assert event.occurred_at.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"features": {"x": math.nan}, "label": 1}, "features.x"),
        ({"text": "x", "label": math.inf}, "label"),
        ({"text": "x", "rating": -math.inf}, "rating"),
        ({"text": "x", "signal": "dwell_ms", "signal_value": math.nan}, "signal_value"),
    ],
)
def test_non_finite_numbers_are_rejected(fields: dict[str, Any], loc: str) -> None:
    assert reason_and_message(feedback(**fields)) == ("validation", f"{loc}: Input should be a finite number")


def test_non_finite_metrics_are_rejected() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        ModelUpdate(
            source="t", model="m", version="1", kind="fine-tuned", uri="u", alias="champion", metrics={"f1": math.nan}
        )


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_tokens_are_invalid_json(token: str) -> None:
    raw = b'{"schema":"feedback/1","source":"web","learner":"ctr","text":"x","rating":' + token.encode() + b"}"
    assert reason_and_message(raw) == ("invalid_json", "invalid JSON: NaN and Infinity are not JSON numbers")


def test_sizes_at_the_limits_are_accepted() -> None:
    event = parse_event(feedback(label=1, text="x" * MAX_TEXT, features={f"f{i}": i for i in range(MAX_FEATURES)}))
    assert isinstance(event, FeedbackEvent)
    assert (len(event.features or {}), len(event.text or "")) == (512, 65536)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"features": {f"f{i}": i for i in range(MAX_FEATURES + 1)}},
            "features: Dictionary should have at most 512 items after validation, not more",
        ),
        ({"text": "x" * (MAX_TEXT + 1)}, "text: String should have at most 65536 characters"),
        ({"features": {"k" * 257: 1}}, f"features.{'k' * 63}….[key]: String should have at most 256 characters"),
        ({"features": {"s": "v" * 1025}}, "features.s: String should have at most 1024 characters"),
    ],
)
def test_sizes_over_the_limits_are_rejected(fields: dict[str, Any], message: str) -> None:
    assert reason_and_message(feedback(label=1, **fields)) == ("validation", message)


def test_feature_types_are_preserved() -> None:
    raw = json.dumps(feedback(label=1, features={"b": True, "i": 1, "f": 1.5, "g": 1.0, "s": "1"})).encode()
    for event in (parse_event(raw), parse_event(json.loads(raw)), parse_event(parse_event(raw).to_json())):
        assert isinstance(event, FeedbackEvent)
        assert [(k, type(v)) for k, v in (event.features or {}).items()] == [
            ("b", bool),
            ("i", int),
            ("f", float),
            ("g", float),
            ("s", str),
        ]


@pytest.mark.parametrize(("token", "value"), [("true", True), ("1", 1), ("1.5", 1.5), ("1.0", 1.0), ('"spam"', "spam")])
def test_label_types_are_preserved(token: str, value: object) -> None:
    raw = json.dumps(feedback(text="x"))[:-1].encode() + b', "label":' + token.encode() + b"}"
    label = parse_event(raw, FeedbackEvent).label
    assert (label, type(label)) == (value, type(value))


def test_a_value_of_no_allowed_type_gets_one_error() -> None:
    assert reason_and_message(feedback(label=1, features={"x": [1]})) == (
        "validation",
        "features.x: Input should be a boolean, a number or a string",
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": "x"}, "feedback needs a label, a rating or a signal"),
        ({"label": 1}, "feedback needs features, text or a prediction_id"),
        ({"text": "x", "label": 1, "signal_value": 3.0}, "signal_value needs a signal"),
    ],
)
def test_feedback_rules(fields: dict[str, Any], message: str) -> None:
    assert reason_and_message(feedback(**fields)) == ("validation", message)


@pytest.mark.parametrize(
    ("fields", "channel"),
    [
        ({"signal": "click"}, "implicit"),
        ({"signal": "click", "label": True}, "explicit"),
        ({"rating": 4}, "explicit"),
        ({"signal": "thumbs_up", "channel": "explicit"}, "explicit"),
        ({"label": 0, "channel": "implicit"}, "implicit"),
    ],
)
def test_channel_defaults(fields: dict[str, Any], channel: str) -> None:
    event = parse_event(json.dumps(feedback(prediction_id="p-1", **fields)), FeedbackEvent)
    assert event.channel == channel
    assert parse_event(event.to_json()) == event


def test_needs_join() -> None:
    assert FeedbackEvent(source="web", learner="ctr", prediction_id="p", signal="click").needs_join
    assert not FeedbackEvent(source="web", learner="ctr", prediction_id="p", text="x", signal="click").needs_join


def test_prediction_needs_an_input() -> None:
    raw = {"schema": "prediction/1", **ENVELOPE, "source": "web", "prediction_id": "p", "learner": "ctr",
           "model_version": "1"}
    assert reason_and_message(raw) == ("validation", "prediction needs features or text")


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        ({"schema": "nope/1"}, "unknown_schema", "unknown schema 'nope/1'"),
        (
            {"schema": "feedback/2"},
            "unknown_schema",
            "unsupported schema version 'feedback/2' (this reader knows feedback/1)",
        ),
        ({"schema": 1}, "unknown_schema", "'schema' must be a string like \"feedback/1\", not a number"),
        ({"source": "web"}, "unknown_schema", "event has no 'schema' field (e.g. \"feedback/1\")"),
        (b"[1]", "invalid_json", "an event is a JSON object, not an array"),
        (b'{"schema":', "invalid_json", "invalid JSON: EOF while parsing a value at line 1 column 10"),
        (b'{"schema":"feedback/1","text":"\xff"}', "invalid_json", "event is not UTF-8: invalid start byte at byte 31"),
        (
            '{"schema":"feedback/1","text":"\ud800"}',
            "invalid_json",
            "event is not UTF-8: surrogates not allowed at character 31",
        ),
    ],
)
def test_undecodable_and_unknown_events(data: Any, reason: str, message: str) -> None:
    assert reason_and_message(data) == (reason, message)


def test_the_envelope_is_required_on_the_wire() -> None:
    # Read twice, a record must give the same event: nothing may be made up at read time.
    no_schema = {k: v for k, v in feedback(text="x", label=1).items() if k != "schema"}
    for expected in (None, FeedbackEvent, (FeedbackEvent, PredictionEvent)):
        assert reason_and_message(json.dumps(no_schema), expected) == (
            "unknown_schema", "event has no 'schema' field (e.g. \"feedback/1\")"
        )
    for field in ("event_id", "occurred_at"):
        raw = json.dumps({k: v for k, v in feedback(text="x", label=1).items() if k != field})
        for expected in (None, FeedbackEvent):
            assert reason_and_message(raw, expected) == ("validation", f"{field}: Field required")


@pytest.mark.parametrize(
    "value",
    [1714564800, 1714564800.5, "1714564800", "2024-05-01T12:00Z", "2024-05-01T12:00:00+0200", "2024-05-01",
     "2024-05-01 12:00:00Z", "2024-05-01T12:00:00", "2024-13-01T12:00:00Z", True, None],
)
def test_occurred_at_is_rfc3339_text_only(value: object) -> None:
    reason, message = reason_and_message(json.dumps(feedback(text="x", label=1, occurred_at=value)))
    assert reason == "validation"
    assert message.startswith("occurred_at: must be an RFC 3339 date-time string with an offset"), message


@pytest.mark.parametrize(
    "value", ["2024-05-01T12:00:00Z", "2024-05-01t12:00:00z", "2024-05-01T12:00:00.123456789-07:30"]
)
def test_rfc3339_spellings_are_accepted(value: str) -> None:
    event = parse_event(json.dumps(feedback(text="x", label=1, occurred_at=value)))
    assert event.occurred_at.utcoffset() is not None


def test_python_construction_fills_in_the_envelope() -> None:
    a = FeedbackEvent(source="web", learner="ctr", text="x", label=1)
    b = FeedbackEvent(source="web", learner="ctr", text="x", label=1)
    assert a.schema_ == "feedback/1" and a.event_id != b.event_id and a.occurred_at.utcoffset() is not None
    raw = a.to_json()
    assert parse_event(raw) == parse_event(raw) == a  # the same bytes, the same event


def test_expected_mismatch() -> None:
    raw = SAMPLES[1].to_json()
    assert reason_and_message(raw, FeedbackEvent) == ("unexpected_schema", "expected feedback/1, got prediction/1")
    assert reason_and_message(raw, (FeedbackEvent, DriftEvent))[0] == "unexpected_schema"
    assert reason_and_message(b'{"schema":"prediction/1"}', FeedbackEvent)[0] == "unexpected_schema"
    assert parse_event(raw, (FeedbackEvent, PredictionEvent)) == SAMPLES[1]


def test_validation_message_lists_each_error() -> None:
    reason, message = reason_and_message({"schema": "drift/1", **ENVELOPE, "source": "a", "learner": "bad name!",
                                          "n_seen": -1})
    assert reason == "validation"
    assert message.split("; ")[:2] == [
        "learner: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'",
        "detector: Field required",
    ]


def test_dead_letter_keeps_the_bytes_and_the_reason() -> None:
    value, key = bytes(range(256)), b"ctr\xff"
    error = InvalidEvent("bad", reason="unknown_learner")
    letter = DeadLetter.from_record(
        topic="learnloop.feedback", partition=3, offset=9, key=key, value=value, error=error, source="agent"
    )
    again = parse_event(letter.to_json(), DeadLetter)
    assert (again.payload_bytes(), again.key, again.reason) == (value, "ctr\\xff", "unknown_learner")
    assert again.error == ErrorInfo(type="InvalidEvent", message="bad")


def test_dead_letter_reason_defaults_and_truncation() -> None:
    def letter(error: BaseException | ErrorInfo, reason: str | None = None) -> DeadLetter:
        return DeadLetter.from_record(
            topic="t", partition=0, offset=0, key=None, value=None, error=error, source="a", reason=reason
        )

    assert letter(ValueError("x" * 10_000)).reason == "processing_error"
    assert len(letter(ValueError("x" * 10_000)).error.message) == MAX_COMMENT
    assert letter(ValueError("x"), reason="orphaned").reason == "orphaned"
    assert letter(InvalidEvent("x", reason="Not A Tag!")).reason == "not_a_tag"
    assert letter(ErrorInfo(type="E", message="m")).payload_bytes() == b""


def test_export_writes_a_valid_json_schema_per_event(tmp_path: Path) -> None:
    paths = export_json_schemas(tmp_path / "out")
    assert [p.name for p in paths] == sorted(
        ["drift.v2.schema.json"]
        + [
            f"{name}.v1.schema.json"
            for name in (
            "feedback",
            "prediction",
            "conversation",
            "drift",
            "retrain",
            "model-update",
            "knowledge",
            "deadletter",
            "rollout",
            )
        ]
    )
    for path in paths:
        doc = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(doc)
        schema_id = doc["$id"].removeprefix("https://learnloop.dev/schemas/")
        assert doc["properties"]["schema"]["const"] == schema_id
        assert EVENT_MODELS[schema_id].__name__ == doc["title"]


def test_exported_feedback_schema_validates_instances(tmp_path: Path) -> None:
    export_json_schemas(tmp_path)
    doc = json.loads((tmp_path / "feedback.v1.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(doc)
    assert doc["title"] == "FeedbackEvent"
    assert list(validator.iter_errors(SAMPLES[0].to_dict())) == []
    bad = [feedback(text="x"), feedback(label=1), feedback(label=1, text="x", colour="red"), {"learner": "ctr"}]
    assert [validator.is_valid(instance) for instance in bad] == [False] * 4


names = st.from_regex(NAME_PATTERN, fullmatch=True)
texts = st.text(st.characters(codec="utf-8"), max_size=40)
ids = texts.filter(bool)
finite = st.floats(allow_nan=False, allow_infinity=False)
values = st.one_of(st.booleans(), st.integers(), finite, texts)
offsets = st.integers(-23 * 60, 23 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@st.composite
def feedback_events(draw: st.DrawFn) -> FeedbackEvent:
    fields: dict[str, Any] = {
        "source": draw(ids),
        "learner": draw(names),
        "occurred_at": draw(st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=offsets)),
        "subject_id": draw(st.none() | ids),
        "features": draw(st.none() | st.dictionaries(ids, values, max_size=12)),
        "text": draw(st.none() | texts),
        "prediction_id": draw(st.none() | ids),
        "label": draw(st.none() | values),
        "rating": draw(st.none() | finite),
        "signal": draw(st.none() | st.from_regex(TAG_PATTERN, fullmatch=True)),
        "comment": draw(st.none() | texts),
    }
    if fields["signal"] is not None:
        fields["signal_value"] = draw(st.none() | finite)
        fields["channel"] = draw(st.sampled_from(["explicit", "implicit", None]))
    if fields["label"] is None and fields["rating"] is None and fields["signal"] is None:
        fields["label"] = draw(values)
    if fields["features"] is None and fields["text"] is None and fields["prediction_id"] is None:
        fields["text"] = draw(texts)
    return FeedbackEvent(**{k: v for k, v in fields.items() if v is not None})


@settings(database=None, deadline=None, max_examples=300)
@given(feedback_events())
def test_any_valid_feedback_round_trips(event: FeedbackEvent) -> None:
    assert parse_event(event.to_json(), FeedbackEvent) == event
    assert parse_event(event.to_dict()) == event


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {"schema": st.sampled_from([*EVENT_MODELS, "feedback/2", "nope/1"])},
    optional={"source": texts, "learner": texts, "label": json_values, "features": json_values, "text": json_values},
)


@settings(database=None, deadline=None, max_examples=300)
@given(st.binary() | st.text() | json_values.map(json.dumps) | event_like.map(json.dumps) | event_like)
def test_bad_input_only_ever_raises_invalid_event(data: Any) -> None:
    try:
        parse_event(data)
    except InvalidEvent as error:
        assert error.reason in {"invalid_json", "unknown_schema", "validation"}
        assert "\n" not in str(error)


def test_drift_topic_readers_take_both_majors_and_an_input_drift_names_its_feature() -> None:
    old, new = SAMPLES[3], SAMPLES[4]
    assert parse_event(old.to_json(), TOPIC_EVENTS["drift"]) == old
    assert parse_event(new.to_json(), TOPIC_EVENTS["drift"]) == new
    reason, message = reason_and_message({**new.to_dict(), "feature": None})
    assert reason == "validation" and "names the feature" in message
    # A drift/1 reader is not handed fields it does not know: the new fields live in drift/2 only.
    assert reason_and_message({**old.to_dict(), "kind": "error"})[0] == "validation"
