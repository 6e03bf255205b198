"""Ingest routes with a stand-in producer: 202 with ids, 413 before parsing, 422 all-or-nothing, 415, 503."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi.testclient import TestClient

from schemas import ConversationEvent, FeedbackEvent, PredictionEvent, parse_event
from streams.topics import Topics
from workers.api.app import create_app
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key
from workers.api.memory import MemoryModels, MemoryPublisher, MemoryStore
from workers.api.ports import Record
from workers.settings import load_settings

KEY = "ll_unit-writer"
AUTH = {"X-API-Key": KEY}
LIMIT = 4096
TOPICS = Topics("t.")
FEEDBACK = {"learner": "ctr", "features": {"price": 9.5, "mobile": True}, "label": 1}
PREDICTION = {"prediction_id": "p-1", "learner": "ctr", "features": {"price": 9.5}, "model_version": "3"}
CONVERSATION = {"conversation_id": "c-1", "turn": 0, "role": "user", "text": "Ada met Babbage."}


class Harness:
    def __init__(self, tmp_path: Path, **config: object) -> None:
        self.publisher = MemoryPublisher()
        api = ApiConfig(
            keys=[ApiKey(name="shop-web", sha256=hash_key(KEY), scopes=("read", "write"))],
            max_body_bytes=LIMIT, max_batch=5, produce_timeout_s=0.5, **config,  # type: ignore[arg-type]
        )
        settings = load_settings(data_dir=tmp_path, kafka={"topic_prefix": "t."})
        self.client = TestClient(create_app(settings, api=api, producer=self.publisher, store=MemoryStore(),
                                           models=MemoryModels([])))

    def metric(self, name: str, **labels: str) -> float:
        app = self.client.app
        value = app.state.gateway.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
        return float(value or 0.0)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    with h.client:
        yield h


def test_one_event_is_produced_to_its_topic_with_the_contract_key(gw: Harness) -> None:
    res = gw.client.post("/v1/feedback", json=FEEDBACK, headers=AUTH)
    assert res.status_code == 202
    body = res.json()
    assert body["accepted"] == 1 and len(body["event_ids"]) == 1
    [record] = gw.publisher.records
    event = parse_event(record.value, FeedbackEvent)
    assert (record.topic, record.key) == (TOPICS.feedback, b"ctr")
    assert str(event.event_id) == body["event_ids"][0]
    assert event.source == "shop-web"  # no source given: the key's name
    assert gw.metric("learnloop_api_events_produced_total", topic=TOPICS.feedback) == 1


def test_the_gateway_fills_in_the_envelope_and_the_record_carries_it(gw: Harness) -> None:
    # HTTP may leave the envelope out; the record on the topic never does (the wire requires it).
    assert gw.client.post("/v1/feedback", json=FEEDBACK, headers=AUTH).status_code == 202
    given = {**FEEDBACK, "event_id": "0b6f1f7e-3c55-4f0e-9d1a-2f3b4c5d6e7f", "occurred_at": "2024-05-01T14:00:00+02:00"}
    assert gw.client.post("/v1/feedback", json=given, headers=AUTH).status_code == 202
    filled, kept = (json.loads(r.value) for r in gw.publisher.records)
    assert filled["schema"] == "feedback/1" and uuid.UUID(filled["event_id"])
    assert datetime.fromisoformat(filled["occurred_at"]).utcoffset() is not None
    assert (kept["event_id"], kept["occurred_at"]) == (given["event_id"], given["occurred_at"])


def test_the_gateway_refuses_an_envelope_a_worker_would_refuse(gw: Harness) -> None:
    for bad in ({"occurred_at": 1714564800}, {"event_id": "0b6f1f7e3c554f0e9d1a2f3b4c5d6e7f"}):
        res = gw.client.post("/v1/feedback", json={**FEEDBACK, **bad}, headers=AUTH)
        assert res.status_code == 422, res.text
        assert res.json()["errors"][0]["reason"] == "validation"
    assert gw.publisher.records == []


def test_a_batch_keeps_its_order_ids_and_given_sources(gw: Harness) -> None:
    mine = str(uuid.uuid4())
    batch = [
        {**PREDICTION, "event_id": mine, "source": "checkout"},
        {**PREDICTION, "prediction_id": "p-2", "text": "hello", "features": None},
    ]
    res = gw.client.post("/v1/predictions", json=batch, headers=AUTH)
    assert res.status_code == 202, res.text
    ids = res.json()["event_ids"]
    assert ids[0] == mine and len(ids) == 2
    events = [parse_event(r.value, PredictionEvent) for r in gw.publisher.records]
    assert [str(e.event_id) for e in events] == ids
    assert [e.source for e in events] == ["checkout", "shop-web"]
    assert [r.key for r in gw.publisher.records] == [b"p-1", b"p-2"]
    assert {r.topic for r in gw.publisher.records} == {TOPICS.predictions}


def test_conversations_are_keyed_by_conversation(gw: Harness) -> None:
    assert gw.client.post("/v1/conversations", json=[CONVERSATION], headers=AUTH).status_code == 202
    assert gw.publisher.records == [
        Record(TOPICS.conversations, b"c-1", gw.publisher.records[0].value)
    ]
    assert parse_event(gw.publisher.records[0].value, ConversationEvent).text == CONVERSATION["text"]


def test_one_invalid_event_rejects_the_batch_and_nothing_is_produced(gw: Harness) -> None:
    batch = [FEEDBACK, {"learner": "ctr", "label": 1}, FEEDBACK, "not an object", {**FEEDBACK, "learner": "bad name"}]
    res = gw.client.post("/v1/feedback", json=batch, headers=AUTH)
    assert res.status_code == 422
    body = res.json()
    assert body["detail"] == "3 of 5 events are invalid; nothing was produced"
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [
        (1, "validation"), (3, "invalid_json"), (4, "validation")
    ]
    assert body["errors"][0]["error"] == "feedback needs features, text or a prediction_id"
    assert body["errors"][2]["error"].startswith("learner: String should match pattern")
    assert gw.publisher.records == []
    assert gw.metric("learnloop_api_events_rejected_total", reason="validation") == 2


@pytest.mark.parametrize(
    ("body", "reason", "fragment"),
    [
        (b"{not json", "invalid_json", "invalid JSON"),
        (b"", "invalid_json", "the body is empty"),
        (b"\xff\xfe{}", "invalid_json", "not UTF-8"),
        (b'{"learner": "ctr", "text": "x", "rating": NaN}', "invalid_json", "invalid JSON"),
        (b"42", "invalid_json", "not a number"),
        (b"[]", "empty_batch", "no events"),
        (b'{"schema": "prediction/1"}', "unexpected_schema", "expected feedback/1, got prediction/1"),
        (b'{"schema": "feedback/2"}', "unknown_schema", "unsupported schema version"),
        (b'{"learner": "ctr", "text": "x", "rating": 1e400}', "validation", "too large to be finite"),
    ],
)
def test_malformed_bodies_are_422_with_the_reason(gw: Harness, body: bytes, reason: str, fragment: str) -> None:
    res = gw.client.post("/v1/feedback", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert res.status_code == 422, res.text
    [error] = res.json()["errors"]
    assert error["reason"] == reason
    assert fragment in error["error"]
    assert gw.publisher.records == []


def test_a_single_object_reports_no_index(gw: Harness) -> None:
    res = gw.client.post("/v1/feedback", json={"learner": "ctr", "text": "x"}, headers=AUTH)
    assert res.json()["detail"] == "the event is invalid; nothing was produced"
    assert res.json()["errors"][0]["index"] is None


def test_declared_length_over_the_limit_is_413_before_reading(gw: Harness) -> None:
    body = b'{"pad": "' + b"x" * LIMIT + b'"}'
    res = gw.client.post("/v1/feedback", content=body, headers=AUTH)
    assert res.status_code == 413
    assert res.json()["errors"][0]["reason"] == "too_large"
    assert gw.metric("learnloop_api_events_rejected_total", reason="too_large") == 1


def test_chunked_body_over_the_limit_is_413(gw: Harness) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(100):  # 100 KiB offered; the gateway stops reading past 4 KiB
            sent.append(i)
            yield b" " * 1024

    res = gw.client.post("/v1/feedback", content=chunks(), headers=AUTH)
    assert res.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in res.request.headers
    assert res.status_code == 413
    assert gw.publisher.records == []


def test_a_body_at_the_limit_is_read(gw: Harness) -> None:
    event = FeedbackEvent(source="s", learner="ctr", text="x", rating=1).to_json()
    body = event + b" " * (LIMIT - len(event))
    res = gw.client.post("/v1/feedback", content=iter([body[:100], body[100:]]), headers=AUTH)
    assert res.status_code == 202


def test_too_many_events_is_413(gw: Harness) -> None:
    res = gw.client.post("/v1/feedback", json=[FEEDBACK] * 6, headers=AUTH)
    assert res.status_code == 413
    assert res.json()["errors"][0]["reason"] == "batch_too_large"


def test_a_non_json_media_type_is_415(gw: Harness) -> None:
    res = gw.client.post("/v1/feedback", content=b"a=1", headers={**AUTH, "Content-Type": "text/plain"})
    assert res.status_code == 415
    ok = gw.client.post("/v1/feedback", json=FEEDBACK, headers={**AUTH, "Content-Type": "application/cloudevents+json"})
    assert ok.status_code == 202


def test_broker_failure_is_503_and_counted(gw: Harness) -> None:
    gw.publisher.failure = KafkaConnectionError("broker down")
    res = gw.client.post("/v1/feedback", json=[FEEDBACK, FEEDBACK], headers=AUTH)
    assert res.status_code == 503
    assert "retry with the same event_ids" in res.json()["detail"]
    assert gw.metric("learnloop_api_events_rejected_total", reason="broker_unavailable") == 2
    assert gw.metric("learnloop_api_events_produced_total", topic=TOPICS.feedback) == 0


def test_a_broker_that_never_answers_is_503_after_the_timeout(gw: Harness) -> None:
    class Stuck(MemoryPublisher):
        async def publish(self, records: object) -> None:
            import asyncio

            await asyncio.sleep(60)

    gw.client.app.state.gateway.publisher = Stuck()  # type: ignore[attr-defined]
    res = gw.client.post("/v1/feedback", json=FEEDBACK, headers=AUTH)
    assert res.status_code == 503


def test_request_metrics_are_labelled_by_route_template(gw: Harness) -> None:
    gw.client.post("/v1/feedback", json=FEEDBACK, headers=AUTH)
    gw.client.post("/v1/feedback", json=FEEDBACK)
    gw.client.get("/no/such/path")
    assert gw.metric("learnloop_api_requests_total", route="/v1/feedback", method="POST", status="202") == 1
    assert gw.metric("learnloop_api_requests_total", route="/v1/feedback", method="POST", status="401") == 1
    assert gw.metric("learnloop_api_requests_total", route="unmatched", method="GET", status="404") == 1
    text = gw.client.get("/metrics").text
    assert 'learnloop_api_request_duration_seconds_count{method="POST",route="/v1/feedback"} 2.0' in text


async def test_a_client_that_disconnects_mid_body_gets_400_not_a_500() -> None:
    from starlette.requests import Request

    from workers.api.ingest import Rejection, read_capped

    sent: list[dict[str, object]] = [{"type": "http.request", "body": b"[{", "more_body": True}]

    async def receive() -> dict[str, object]:
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    with pytest.raises(Rejection) as info:
        await read_capped(request, LIMIT)
    assert (info.value.status_code, info.value.errors[0].reason) == (400, "client_disconnected")


@pytest.mark.parametrize("depth", [150, 1500])
def test_deeply_nested_json_is_422(gw: Harness, depth: int) -> None:
    body = b'{"learner": "ctr", "rating": 1, "text": ' + b"[" * depth + b"]" * depth + b"}"
    res = gw.client.post("/v1/feedback", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert res.status_code == 422
    assert res.json()["errors"][0]["reason"] == ("validation" if depth < 200 else "invalid_json")
