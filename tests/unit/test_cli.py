"""The `learnloop` command: CliRunner for the commands, a real process for `main()`'s error path."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from schemas import (
    EVENT_MODELS,
    ConversationEvent,
    Envelope,
    FeedbackEvent,
    InvalidEvent,
    PredictionEvent,
    parse_event,
    schema_file_name,
)
from streams.config import KafkaConfig
from streams.topics import Topics
from workers.cli import app, produce_cmd

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("LEARNLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def events() -> list[Envelope]:
    return [
        FeedbackEvent(source="cli", learner="sea", features={"x1": 1.0}, label=True),
        PredictionEvent(source="cli", prediction_id="p1", learner="sea", features={"x1": 1.0}, model_version="1"),
        ConversationEvent(source="cli", conversation_id="c1", turn=0, role="user", text="hello"),
    ]


def jsonl(path: Path, lines: Iterable[bytes | str]) -> Path:
    path.write_text("\n".join(x.decode() if isinstance(x, bytes) else x for x in lines) + "\n")
    return path


def problem(line: str) -> str:
    try:
        parse_event(line)
    except InvalidEvent as exc:
        return str(exc)
    raise AssertionError(f"{line!r} is valid")


class FakeProducer:
    """Stands in for EventProducer: records what would be sent, connects to nothing."""

    sent: list[Envelope]

    def __init__(self, kafka: KafkaConfig) -> None:
        self.topics = Topics(kafka.topic_prefix)

    async def __aenter__(self) -> FakeProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def send_many(self, items: list[Envelope]) -> list[Envelope]:
        FakeProducer.sent.extend(items)
        return items


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Envelope]:
    async def no_admin(kafka: KafkaConfig, names: list[str]) -> None:
        pass

    FakeProducer.sent = []
    monkeypatch.setattr(produce_cmd, "EventProducer", FakeProducer)
    monkeypatch.setattr(produce_cmd, "ensure_topics", no_admin)
    return FakeProducer.sent


def learnloop(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`learnloop ...` as a real process, through `main()`, with no LEARNLOOP_* but ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60,
    )


def assert_one_error_line(res: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert res.returncode == 2
    for f in fragments:
        assert f in lines[0]


# -- CliRunner ---------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for command in ("dev", "demo", "learners", "produce", "schemas", "worker"):
        assert f" {command} " in res.stdout


def test_schemas_export_writes_one_valid_json_schema_per_event(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    res = runner.invoke(app, ["schemas", "export", str(out)])
    assert res.exit_code == 0, res.output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == sorted(schema_file_name(s) for s in EVENT_MODELS)
    assert len(files) == 10  # drift has two majors on the wire: drift/1 and drift/2
    assert res.stdout.split() == [str(f) for f in files]
    for f in files:
        jsonschema.Draft202012Validator.check_schema(json.loads(f.read_text()))


def test_exported_schemas_accept_the_events_python_writes(tmp_path: Path) -> None:
    runner.invoke(app, ["schemas", "export", str(tmp_path)])
    for ev in events():
        schema = json.loads((tmp_path / schema_file_name(ev.SCHEMA_ID)).read_text())
        jsonschema.validate(json.loads(ev.to_json()), schema, cls=jsonschema.Draft202012Validator)


def test_schemas_export_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("")
    res = runner.invoke(app, ["schemas", "export", str(target)])
    assert res.exit_code == 2
    assert "is not a directory" in res.output


def test_produce_sends_every_valid_line(tmp_path: Path, sent: list[Envelope]) -> None:
    evs = events()
    res = runner.invoke(app, ["produce", str(jsonl(tmp_path / "e.jsonl", [e.to_json() for e in evs]))])
    assert res.exit_code == 0, res.output
    assert sent == evs
    assert res.stdout.strip() == f"sent {len(evs)} event(s)"


def test_produce_reads_stdin(sent: list[Envelope]) -> None:
    evs = events()
    res = runner.invoke(app, ["produce", "-"], input="\n".join(e.to_json().decode() for e in evs))
    assert res.exit_code == 0, res.output
    assert sent == evs


def test_produce_with_invalid_lines_reports_them_and_sends_nothing(tmp_path: Path, sent: list[Envelope]) -> None:
    good = events()[0].to_json().decode()
    lines = [good, '{"schema": "feedback/1"}', "", "not json", good]
    res = runner.invoke(app, ["produce", str(jsonl(tmp_path / "e.jsonl", lines))])
    assert res.exit_code == 1
    assert sent == []
    assert res.stderr.splitlines() == [
        f"line 2: {problem(lines[1])}",
        f"line 4: {problem(lines[3])}",
        "2 invalid line(s); nothing sent (use --skip-invalid to send the rest)",
    ]


def test_produce_validates_before_reading_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS", "no-port")  # would fail if settings were read
    res = runner.invoke(app, ["produce", str(jsonl(tmp_path / "e.jsonl", ["{}"]))])
    assert res.exit_code == 1
    assert res.stderr.startswith("line 1: ")


def test_produce_skip_invalid_sends_the_rest(tmp_path: Path, sent: list[Envelope]) -> None:
    evs = events()
    lines: list[bytes | str] = [evs[0].to_json(), "[]", evs[1].to_json()]
    res = runner.invoke(app, ["produce", "--skip-invalid", str(jsonl(tmp_path / "e.jsonl", lines))])
    assert res.exit_code == 1, res.output  # sent, and still a failure a script notices
    assert sent == evs[:2]
    assert res.stderr.splitlines() == [f"line 2: {problem('[]')}"]
    assert res.stdout.strip() == "sent 2 event(s), skipped 1 invalid"


def test_produce_shows_at_most_twenty_invalid_lines(tmp_path: Path, sent: list[Envelope]) -> None:
    res = runner.invoke(app, ["produce", str(jsonl(tmp_path / "e.jsonl", ["{}"] * 25))])
    assert res.exit_code == 1
    errs = res.stderr.splitlines()
    assert [e.split(":")[0] for e in errs[:20]] == [f"line {n}" for n in range(1, 21)]
    assert errs[20:] == [
        "... and 5 more invalid lines",
        "25 invalid line(s); nothing sent (use --skip-invalid to send the rest)",
    ]


def test_produce_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["produce", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2
    assert "no such file" in res.output


# -- main(): LearnloopError as one line, exit 2 ------------------------------------


def test_bad_learners_file_value_is_one_line(tmp_path: Path) -> None:
    learners = tmp_path / "learners.toml"
    learners.write_text("[learners.sea.drift]\ndelta = -1\n")
    res = learnloop("worker", "feedback", env={"LEARNLOOP_LEARNERS_FILE": str(learners)}, cwd=tmp_path)
    assert_one_error_line(res, str(learners), "learners.sea.drift.delta", "greater than 0")


def test_bad_env_value_is_one_line(tmp_path: Path) -> None:
    res = learnloop("learners", env={"LEARNLOOP_KAFKA__PARTITIONS": "zero"}, cwd=tmp_path)
    assert_one_error_line(res, "LEARNLOOP_KAFKA__PARTITIONS", "'zero'")


def test_unreachable_broker_is_a_readable_error(tmp_path: Path) -> None:
    file = jsonl(tmp_path / "e.jsonl", [events()[0].to_json()])
    res = learnloop("produce", str(file), env={"LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}, cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr, res.stderr
    assert "error: cannot reach Kafka at 127.0.0.1:1" in res.stderr


# -- regressions: problems found and fixed ------------------------------------


def test_produce_missing_file_through_main_is_one_line(tmp_path: Path) -> None:
    res = learnloop("produce", "missing.jsonl", cwd=tmp_path)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2
    assert "no such file: missing.jsonl" in res.stderr


@pytest.mark.parametrize("args", [["no-such-command"], ["produce"], ["produce", "--no-such-option", "x"]])
def test_usage_errors_through_main_are_not_tracebacks(tmp_path: Path, args: list[str]) -> None:
    res = learnloop(*args, cwd=tmp_path)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2


def test_env_section_with_bad_json_is_one_line(tmp_path: Path) -> None:
    res = learnloop("learners", env={"LEARNLOOP_KAFKA": "{bad"}, cwd=tmp_path)
    assert_one_error_line(res, "LEARNLOOP_KAFKA")


def test_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    res = learnloop("learners", env={"LEARNLOOP_REDIS__URL": "redis://127.0.0.1:1/0"}, cwd=tmp_path)
    assert_one_error_line(res, "redis")


def test_unreachable_broker_leaks_no_producer(tmp_path: Path) -> None:
    file = jsonl(tmp_path / "e.jsonl", [events()[0].to_json()])
    res = learnloop("produce", str(file), env={"LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}, cwd=tmp_path)
    assert res.returncode == 2
    assert "Unclosed" not in res.stderr, res.stderr


# -- exit codes and messages through main() (issue 9, point 11) -----------------------


def test_produce_with_an_invalid_line_exits_1_through_main(tmp_path: Path) -> None:
    # main() ran click without standalone mode and dropped the code of `typer.Exit(1)`: exit 0.
    bad = '{"schema": "feedback/1"}'
    file = jsonl(tmp_path / "e.jsonl", [events()[0].to_json(), bad])
    res = learnloop("produce", str(file), cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert res.stderr.splitlines() == [
        f"line 2: {problem(bad)}",
        "1 invalid line(s); nothing sent (use --skip-invalid to send the rest)",
    ]


def test_graph_entity_unknown_exits_1_with_one_line(tmp_path: Path) -> None:
    from workers.graph.factory import open_graph
    from workers.settings import load_settings

    graph = open_graph(load_settings(data_dir=tmp_path / ".learnloop"))
    try:
        graph.stats()  # the first use creates the empty graph, as the conversation worker does
    finally:
        graph.close()
    res = learnloop("graph", "entity", "Nobody", cwd=tmp_path)
    assert (res.returncode, res.stderr.strip()) == (1, "no entity named 'Nobody'")


@pytest.mark.parametrize(
    ("args", "command"), [(["models", "--json"], "models"), (["worker", "trainer"], "worker trainer")]
)
def test_a_command_without_the_train_extra_says_what_to_install(
    tmp_path: Path, args: list[str], command: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    # As if the extra were not installed: `import mlflow` fails, find_spec finds nothing.
    (site / "sitecustomize.py").write_text('import sys\nsys.modules["mlflow"] = None\n')
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    res = learnloop(*args, env={"PYTHONPATH": path}, cwd=tmp_path)
    assert_one_error_line(res, f"learnloop {command} needs the 'train' extra", "mlflow", "pip install -e '.[train]'")


def test_an_unparsable_nested_variable_is_named_exactly(tmp_path: Path) -> None:
    res = learnloop("learners", env={"LEARNLOOP_NLP__GAZETTEER": "notjson"}, cwd=tmp_path)
    assert_one_error_line(res, "LEARNLOOP_NLP__GAZETTEER: cannot parse the value as JSON")


@pytest.mark.parametrize("args", [["learners"], ["worker", "feedback"]])
def test_an_explicit_learners_file_that_does_not_exist_is_an_error(tmp_path: Path, args: list[str]) -> None:
    res = learnloop(*args, env={"LEARNLOOP_LEARNERS_FILE": "missing.toml"}, cwd=tmp_path)
    assert_one_error_line(res, "LEARNLOOP_LEARNERS_FILE: no such file: missing.toml")


def test_learners_refuses_the_file_the_workers_refuse_with_the_same_line(tmp_path: Path) -> None:
    learners = tmp_path / "learners.toml"  # the default path: found without any variable
    learners.write_text('[learners.sea]\nmodel = "no_such_model"\n')
    # An unreachable Redis shows the file is checked first, as the worker checks it before starting.
    env = {"LEARNLOOP_REDIS__URL": "redis://127.0.0.1:1/0"}
    status, worker = (learnloop(*args, env=env, cwd=tmp_path) for args in (["learners"], ["worker", "feedback"]))
    assert_one_error_line(status, "learners.toml: learners.sea.model")
    assert status.stderr == worker.stderr


def test_learners_json_shows_what_the_retrain_policy_held_back(tmp_path: Path, redis_url: str) -> None:
    from workers.feedback.redis_store import RedisStore
    from workers.settings import RedisConfig

    prefix = f"cli-gate-{uuid.uuid4().hex[:8]}:"
    status = {
        "name": "sea", "task": "binary", "model": "logistic_regression", "n_learned": 10, "metrics": {},
        "drifts": 2, "retrain_gate": {"requested": {"drift": 1}, "gated": {"cooldown": 1}},
        "monitors": {"estimate": {"estimated_accuracy": 0.8, "realized_accuracy": 0.75}},
    }  # fmt: skip

    async def write() -> None:
        store = RedisStore.from_config(RedisConfig(url=redis_url, key_prefix=prefix))
        try:
            await store.commit("t", 0, snapshot=b"x", offset=1, event_ids=[], statuses={"sea": status})
        finally:
            await store.close()

    async def clean() -> None:
        store = RedisStore.from_config(RedisConfig(url=redis_url, key_prefix=prefix))
        try:
            keys = [key async for key in store.r.scan_iter(match=f"{prefix}*")]
            if keys:
                await store.r.delete(*keys)
        finally:
            await store.close()

    asyncio.run(write())
    env = {"LEARNLOOP_REDIS__URL": redis_url, "LEARNLOOP_REDIS__KEY_PREFIX": prefix}
    try:
        res = learnloop("learners", "--json", env=env, cwd=tmp_path)
    finally:
        asyncio.run(clean())
    assert res.returncode == 0, res.stderr
    [row] = json.loads(res.stdout)
    assert row["retrain_gate"] == status["retrain_gate"]
    assert row["monitors"]["estimate"]["estimated_accuracy"] == 0.8
