"""One wire contract: the reader (``parse_event``) and the exported JSON Schemas accept and refuse the same records.

Producers in other languages validate against the exported JSON Schema (draft 2020-12) and workers read with
pydantic; a record one accepts and the other refuses is either lost in a dead-letter topic or never sent.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import EVENT_MODELS, InvalidEvent, export_json_schemas, parse_event
from streams.producer import as_event
from tests.unit.test_schemas import SAMPLES, feedback, feedback_events


def _date_time(value: object) -> bool:
    # jsonschema checks "date-time" only with an optional package; the pattern in the schema already
    # pins the spelling, so this adds what a format-asserting validator (ajv-formats) adds: a real date.
    if not isinstance(value, str):
        return True
    try:
        date.fromisoformat(value[:10])
    except ValueError:
        return False
    return True


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date-time")(_date_time)


@pytest.fixture(scope="module")
def validators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, jsonschema.Draft202012Validator]:
    """The exported files, read back as a producer would read them."""
    out = {}
    directory = tmp_path_factory.mktemp("schemas-json")
    for path in export_json_schemas(directory):
        doc = json.loads(Path(path).read_text())
        out[doc["properties"]["schema"]["const"]] = jsonschema.Draft202012Validator(doc, format_checker=FORMATS)
    assert set(out) == set(EVENT_MODELS)
    return out


def reader_accepts(doc: object) -> bool:
    try:
        parse_event(json.dumps(doc))
    except InvalidEvent:
        return False
    return True


def schema_accepts(validators: dict[str, jsonschema.Draft202012Validator], doc: object) -> bool:
    # A producer picks the file by the event it means to send; without a known `schema` no file fits.
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str) or doc["schema"] not in validators:
        return False
    return bool(validators[doc["schema"]].is_valid(doc))


def without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}


FEEDBACK = feedback(text="x", label=1)
HAND_WRITTEN: list[tuple[str, object, bool]] = [
    *[(f"sample {e.SCHEMA_ID}", e.to_dict(), True) for e in SAMPLES],
    ("feedback", FEEDBACK, True),
    ("no schema", without(FEEDBACK, "schema"), False),
    ("no event_id", without(FEEDBACK, "event_id"), False),
    ("no occurred_at", without(FEEDBACK, "occurred_at"), False),
    ("no source", without(FEEDBACK, "source"), False),
    ("occurred_at as epoch seconds", {**FEEDBACK, "occurred_at": 1714564800}, False),
    ("occurred_at as epoch text", {**FEEDBACK, "occurred_at": "1714564800"}, False),
    ("occurred_at without offset", {**FEEDBACK, "occurred_at": "2024-05-01T12:00:00"}, False),
    ("occurred_at without seconds", {**FEEDBACK, "occurred_at": "2024-05-01T12:00Z"}, False),
    ("occurred_at with +0200", {**FEEDBACK, "occurred_at": "2024-05-01T12:00:00+0200"}, False),
    ("occurred_at with a space", {**FEEDBACK, "occurred_at": "2024-05-01 12:00:00Z"}, False),
    ("occurred_at on 30 February", {**FEEDBACK, "occurred_at": "2024-02-30T12:00:00Z"}, False),
    ("occurred_at with nanoseconds", {**FEEDBACK, "occurred_at": "2024-05-01T12:00:00.123456789+05:30"}, True),
    ("occurred_at in lower case", {**FEEDBACK, "occurred_at": "2024-05-01t12:00:00z"}, True),
    ("event_id without hyphens", {**FEEDBACK, "event_id": "0b6f1f7e3c554f0e9d1a2f3b4c5d6e7f"}, False),
    ("event_id in braces", {**FEEDBACK, "event_id": "{0b6f1f7e-3c55-4f0e-9d1a-2f3b4c5d6e7f}"}, False),
    ("event_id in upper case", {**FEEDBACK, "event_id": "0B6F1F7E-3C55-4F0E-9D1A-2F3B4C5D6E7F"}, True),
    ("event_id a number", {**FEEDBACK, "event_id": 7}, False),
    ("signal_value without signal", {**FEEDBACK, "signal_value": 3.5}, False),
    ("signal_value with a null signal", {**FEEDBACK, "signal": None, "signal_value": 3.5}, False),
    ("signal_value null without signal", {**FEEDBACK, "signal_value": None}, True),
    ("signal_value with signal", feedback(text="x", signal="dwell_ms", signal_value=3.5), True),
    ("no target", without(FEEDBACK, "label"), False),
    ("null target", {**FEEDBACK, "label": None}, False),
    ("no input", without(FEEDBACK, "text"), False),
    ("unknown field", {**FEEDBACK, "colour": "red"}, False),
    ("unknown schema version", {**FEEDBACK, "schema": "feedback/2"}, False),
    ("a rating as text", {**without(FEEDBACK, "label"), "rating": "4.5"}, False),
    ("a boolean turn", {**SAMPLES[2].to_dict(), "turn": True}, False),
    ("not an object", [FEEDBACK], False),
    ("input drift without its feature", {**SAMPLES[4].to_dict(), "feature": None}, False),
    ("input drift, feature left out", without(SAMPLES[4].to_dict(), "feature"), False),
    ("prediction drift without a feature", {**without(SAMPLES[4].to_dict(), "feature"), "kind": "prediction"}, True),
    ("drift/1 with a drift/2 field", {**SAMPLES[3].to_dict(), "kind": "error"}, False),
]


@pytest.mark.parametrize(("doc", "valid"), [(d, v) for _, d, v in HAND_WRITTEN], ids=[n for n, _, _ in HAND_WRITTEN])
def test_reader_and_json_schema_agree_on_known_cases(
    validators: dict[str, jsonschema.Draft202012Validator], doc: object, valid: bool
) -> None:
    assert (reader_accepts(doc), schema_accepts(validators, doc)) == (valid, valid)


# What the mutations write. Two gaps are left out on purpose, both outside what the schema language says:
# an integer field given 2.0 (JSON Schema counts 2.0 as an integer, the reader wants an integer token), and
# a string ending in a newline matched against a `...$` pattern (Python's re, which jsonschema uses, lets
# `$` match before a final newline; pydantic-core's and JavaScript's do not). DataWindow's start <= end
# is a cross-field rule of the reader that JSON Schema cannot state; windows keep their sample value.
texts = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=12)
special_strings = st.sampled_from([
    "", "x", "feedback/1", "prediction/1", "ctr", "bad name!", "click", "champion", "user", "assistant",
    "2024-05-01T12:00:00Z", "2024-05-01T12:00:00", "2024-13-01T12:00:00Z", "1714564800",
    "0b6f1f7e-3c55-4f0e-9d1a-2f3b4c5d6e7f", "0b6f1f7e3c554f0e9d1a2f3b4c5d6e7f",
])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    texts,
    special_strings,
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=6
)
FIELD_NAMES = sorted({name for s in SAMPLES for name in s.to_dict()} | {"signal", "signal_value", "colour"})
MUTABLE = [s.to_dict() for s in SAMPLES]


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = dict(draw(st.sampled_from(MUTABLE)))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):  # mostly one change, so most stay close to valid
        key = draw(st.sampled_from(sorted(doc)) | st.sampled_from(FIELD_NAMES))
        if key == "window":
            continue
        nested = doc.get(key)
        if draw(st.booleans()):
            doc.pop(key, None)
        elif isinstance(nested, dict) and nested and draw(st.booleans()):
            inner = draw(st.sampled_from(sorted(nested)))
            doc[key] = {**nested, inner: draw(json_values)}
        else:
            doc[key] = draw(scalars | json_values)
    return doc


@settings(database=None, deadline=None, max_examples=1000)
@given(mutated())
def test_reader_and_json_schema_agree_on_mutated_records(
    validators: dict[str, jsonschema.Draft202012Validator], doc: dict[str, Any]
) -> None:
    assert reader_accepts(doc) == schema_accepts(validators, doc)


@settings(database=None, deadline=None, max_examples=200)
@given(feedback_events())
def test_every_valid_feedback_passes_both(
    validators: dict[str, jsonschema.Draft202012Validator], event: Any
) -> None:
    doc = event.to_dict()
    assert reader_accepts(doc) and schema_accepts(validators, doc)


def test_writers_fill_in_the_envelope_readers_do_not() -> None:
    """The SDK fills in a dict as constructing a model does; JSON text is the record itself."""
    doc = {"schema": "feedback/1", "source": "sdk", "learner": "ctr", "text": "x", "label": 1}
    event = as_event(doc)
    assert event.occurred_at.utcoffset() is not None
    assert as_event(event.to_json()) == event
    with pytest.raises(InvalidEvent, match="event_id: Field required"):
        as_event(json.dumps(doc))
    with pytest.raises(InvalidEvent, match="no 'schema' field"):
        as_event(without(doc, "schema"))  # the schema picks the topic: the SDK does not guess it
