"""`learnloop produce` and the sync SDK against the real broker: each event on its topic, keyed by contract."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from schemas import ConversationEvent, Envelope, FeedbackEvent, InvalidEvent, PredictionEvent
from streams.admin import ensure_topics
from streams.producer import SyncEventProducer
from streams.topics import Topics
from tests.conftest import worker_env
from tests.integration.util import read_topic
from workers.settings import Settings

pytestmark = pytest.mark.integration


def contract_key(ev: Envelope) -> bytes:
    """The key DESIGN.md gives each input event, spelled out here rather than taken from the SDK."""
    if isinstance(ev, FeedbackEvent):
        return ev.learner.encode()
    if isinstance(ev, PredictionEvent):
        return ev.prediction_id.encode()
    assert isinstance(ev, ConversationEvent)
    return ev.conversation_id.encode()


def sample_events() -> list[Envelope]:
    return [
        FeedbackEvent(source="cli", learner="sea", features={"x1": 0.5, "plan": "pro"}, label=True),
        FeedbackEvent(source="cli", learner="ctr", prediction_id="p-1", signal="click"),
        PredictionEvent(source="cli", prediction_id="p-1", learner="ctr", features={"x1": 1.5}, model_version="3"),
        PredictionEvent(source="cli", prediction_id="p-2", learner="sea", text="hello there", model_version="3"),
        ConversationEvent(source="cli", conversation_id="c-1", turn=0, role="user", text="Ada met Babbage."),
        ConversationEvent(source="cli", conversation_id="c-2", turn=1, role="assistant", text="In London."),
    ]


Pairs = list[tuple[bytes | None, bytes]]


def input_topics(settings: Settings) -> dict[type[Envelope], str]:
    topics = Topics(settings.kafka.topic_prefix)
    return {
        FeedbackEvent: topics.feedback,
        PredictionEvent: topics.predictions,
        ConversationEvent: topics.conversations,
    }


async def arrived(settings: Settings, events: Sequence[Envelope]) -> dict[str, Pairs]:
    """What each input topic holds, as (key, value) pairs, read until the expected number is there."""
    out = {}
    for cls, name in input_topics(settings).items():
        expect = sum(isinstance(e, cls) for e in events)
        out[name] = sorted((r.key, r.value) for r in await read_topic(settings.kafka, name, expect=expect))
    return out


def expected(settings: Settings, events: Sequence[Envelope]) -> dict[str, Pairs]:
    by_type = input_topics(settings)
    out: dict[str, Pairs] = {name: [] for name in by_type.values()}
    for e in events:
        out[by_type[type(e)]].append((contract_key(e), e.to_json()))
    return {name: sorted(pairs) for name, pairs in out.items()}


def produce(settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", "produce", *args],
        cwd=cwd, env=worker_env(settings), capture_output=True, text=True, timeout=120,
    )


async def test_produce_sends_each_event_to_its_topic_with_the_contract_key(settings: Settings, tmp_path: Path) -> None:
    events = sample_events()
    file = tmp_path / "events.jsonl"
    file.write_bytes(b"\n".join(e.to_json() for e in events) + b"\n")
    res = produce(settings, tmp_path, str(file))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"sent {len(events)} event(s)"
    assert await arrived(settings, events) == expected(settings, events)


async def test_produce_skip_invalid_sends_the_valid_lines(settings: Settings, tmp_path: Path) -> None:
    good = sample_events()[::2]  # one of each type
    lines = [good[0].to_json(), b'{"schema": "feedback/1", "source": "cli"}', good[1].to_json(), good[2].to_json()]
    file = tmp_path / "events.jsonl"
    file.write_bytes(b"\n".join(lines) + b"\n")
    res = produce(settings, tmp_path, "--skip-invalid", str(file))
    assert res.returncode == 1, res.stderr  # the valid lines are sent; the invalid one still fails the run
    assert res.stderr.startswith("line 2: ")
    assert len(res.stderr.splitlines()) == 1
    assert res.stdout.strip() == f"sent {len(good)} event(s), skipped 1 invalid"
    assert await arrived(settings, good) == expected(settings, good)


async def test_sync_producer_sends_models_and_dicts(settings: Settings) -> None:
    models = sample_events()
    await ensure_topics(settings.kafka, Topics(settings.kafka.topic_prefix).all())
    with SyncEventProducer(settings.kafka) as p:
        with pytest.raises(InvalidEvent):
            p.send({"schema": "feedback/1", "source": "sdk"})  # refused before it reaches the broker
        sent = [p.send(models[0]), p.send(models[2].to_dict())]
        sent += p.send_many([models[4].to_json(), *models[5:]])
        p.flush()
    assert sent[0] is models[0]
    assert sent[1:] == [models[2], models[4], models[5]]
    assert await arrived(settings, sent) == expected(settings, sent)
