"""Property tests of the gateway's input handling: any body, any key, any size; never a 500.

The oracle for validity is the schemas themselves (``parse_event``, as a worker
reads the topic), and every answer must match the response schema the OpenAPI
document declares for its status.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import event as label
from hypothesis import strategies as st

from schemas import Envelope, InvalidEvent, fill_envelope, parse_event
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.ingest import INGEST_ROUTES
from workers.api.keys import hash_key
from workers.api.memory import MemoryModels, MemoryPublisher, MemoryStore
from workers.settings import load_settings

KEY = "ll_property-writer"
AUTH = {"X-API-Key": KEY, "Content-Type": "application/json"}
LIMIT, BATCH = 2048, 4
ROUTES = sorted(INGEST_ROUTES)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Gateway:
    def __init__(self, tmp_path: Path) -> None:
        self.publisher = MemoryPublisher()
        api = ApiConfig(keys=[ApiKey(name="prop", sha256=hash_key(KEY), scopes=("read", "write"))],
                        max_body_bytes=LIMIT, max_batch=BATCH)
        app = create_app(load_settings(data_dir=tmp_path), api=api, producer=self.publisher, store=MemoryStore(),
                         models=MemoryModels([]))
        self.client = TestClient(app)
        self.doc = app.openapi()

    def post(self, path: str, body: bytes | Iterator[bytes], headers: dict[str, str] | None = None) -> Any:
        self.publisher.records.clear()
        res = self.client.post(path, content=body, headers=AUTH if headers is None else headers)
        self.check_against_spec(path, res)
        return res

    def check_against_spec(self, path: str, res: Any) -> None:
        assert res.status_code < 500, res.text
        declared = self.doc["paths"][path]["post"]["responses"]
        assert str(res.status_code) in declared, f"{res.status_code} is not in the OpenAPI document"
        schema = declared[str(res.status_code)]["content"]["application/json"]["schema"]
        jsonschema.validate(res.json(), {**schema, "components": self.doc["components"]})


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("api"))
    with g.client:
        yield g


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
names = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
features = st.dictionaries(names, st.booleans() | st.integers(-1000, 1000) | st.floats(-1e6, 1e6) | names, max_size=4)
VALID_EVENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/feedback": st.fixed_dictionaries(
        {"learner": names, "features": features},
        optional={"label": st.booleans() | st.integers(0, 3), "rating": st.floats(0, 5), "signal": names,
                  "text": st.text(max_size=30), "source": names, "event_id": st.uuids().map(str)},
    ),
    "/v1/predictions": st.fixed_dictionaries(
        {"prediction_id": names, "learner": names, "features": features, "model_version": names},
        optional={"probability": st.floats(0, 1), "prediction": st.booleans(), "source": names},
    ),
    "/v1/conversations": st.fixed_dictionaries(
        {"conversation_id": names, "turn": st.integers(0, 50), "role": st.sampled_from(["user", "assistant"]),
         "text": st.text(min_size=1, max_size=40)},
        optional={"user_id": names, "source": names, "schema": st.just("conversation/1")},
    ),
}


@st.composite
def mutated(draw: st.DrawFn, route: str) -> Any:
    """A valid event, then maybe broken: a field dropped, a value replaced, an unknown field, or not an object."""
    event = draw(VALID_EVENTS[route])
    change = draw(st.sampled_from(["none", "none", "drop", "replace", "extra", "other"]))
    if change == "drop" and event:
        event.pop(draw(st.sampled_from(sorted(event))))
    elif change == "replace" and event:
        event[draw(st.sampled_from(sorted(event)))] = draw(json_values)
    elif change == "extra":
        event[draw(names)] = draw(json_values)
    elif change == "other":
        return draw(json_values)
    return event


def oracle(item: Any, model: type[Envelope]) -> Envelope | None:
    """What a worker makes of the event the gateway would produce (None: invalid).

    HTTP is not the wire: what the request leaves out of the envelope the gateway fills in.
    """
    if not isinstance(item, dict):
        return None
    try:
        return parse_event(json.dumps(fill_envelope({"source": "prop", **item}, model.SCHEMA_ID)), model)
    except InvalidEvent:
        return None


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    route = draw(st.sampled_from(ROUTES))
    if draw(st.booleans()):
        return route, draw(mutated(route))
    return route, draw(st.lists(mutated(route), min_size=0, max_size=BATCH + 1))


@PROPERTY
@given(requests())
def test_the_gateway_accepts_exactly_what_the_schemas_accept(gw: Gateway, case: tuple[str, Any]) -> None:
    route, doc = case
    model = INGEST_ROUTES[route]
    body = json.dumps(doc).encode()
    res = gw.post(route, body)
    label(f"{'batch' if isinstance(doc, list) else 'single'}: {res.status_code}")
    items = doc if isinstance(doc, list) else [doc]
    if len(body) > LIMIT or (isinstance(doc, list) and len(doc) > BATCH):
        assert res.status_code == 413
    elif isinstance(doc, list) and not doc:
        assert res.status_code == 422
    else:
        verdicts = [oracle(item, model) for item in items]
        invalid = [i for i, v in enumerate(verdicts) if v is None]
        if invalid:
            assert res.status_code == 422
            indices = [e["index"] for e in res.json()["errors"]]
            assert indices == (invalid if isinstance(doc, list) else [None])
        else:
            assert res.status_code == 202, res.text
            produced = [parse_event(r.value, model) for r in gw.publisher.records]
            assert [str(e.event_id) for e in produced] == res.json()["event_ids"]
            for event, item in zip(produced, items, strict=True):
                assert event.source == item.get("source", "prop")
                if "event_id" in item:
                    assert event.event_id == uuid.UUID(item["event_id"])
    if res.status_code != 202:
        assert gw.publisher.records == []  # all or nothing


@PROPERTY
@given(st.sampled_from(ROUTES), st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_get_an_answer_from_the_spec_never_a_500(gw: Gateway, route: str, body: bytes) -> None:
    res = gw.post(route, body)
    assert res.status_code in (202, 413, 422)


@PROPERTY
@given(st.integers(LIMIT - 64, LIMIT + 64), st.booleans(), st.integers(1, 512))
def test_bodies_over_the_limit_are_413_declared_or_chunked(gw: Gateway, size: int, chunked: bool, step: int) -> None:
    event = b'{"learner": "ctr", "text": "x", "rating": 1}'
    body = event + b" " * (size - len(event))
    parts = iter([body[i : i + step] for i in range(0, len(body), step)])
    res = gw.post("/v1/feedback", parts if chunked else body)
    assert res.status_code == (413 if size > LIMIT else 202)


@PROPERTY
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60),
       st.sampled_from(["X-API-Key", "Authorization"]))
def test_only_the_exact_key_opens_the_door(gw: Gateway, presented: str, header: str) -> None:
    value = presented if header == "X-API-Key" else f"Bearer {presented}"
    res = gw.post("/v1/conversations", b'{"conversation_id": "c", "turn": 0, "role": "user", "text": "hi"}',
                  headers={header: value})
    assert res.status_code == (202 if presented == KEY else 401)
