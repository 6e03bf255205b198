"""infra/ and docker-compose.yml, checked without a Docker engine.

* every learnloop service's ``command`` is a real ``learnloop`` command (walked through the
  Typer app, options parsed by the leaf command) and every ``LEARNLOOP_*`` variable is a real
  settings field; each service's environment loads as valid Settings;
* the compose wiring hangs together: mounted paths exist, dependencies have the health checks
  their conditions need, secrets are required, Prometheus scrapes the ports the services use;
* the Prometheus rules and the Grafana dashboards parse and use only the metric names (and
  labels) the workers export, read from the code's metric classes into ``METRICS`` below;
* with ``promtool`` on PATH: ``promtool check config``, ``check rules`` and the rule unit tests.

Commands, settings and metrics that other changes are still wiring are listed in ``PENDING_*``:
while they are absent the matching cases xfail, and a name that exists but is misspelt fails.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from learners.config import load_learners_file
from workers.cli import app
from workers.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROM_DIR = ROOT / "infra" / "prometheus"
GRAFANA_DIR = ROOT / "infra" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"

class _RecordingRegistry(CollectorRegistry):
    """A registry that remembers what was registered on it, to list every family with its labels."""

    def __init__(self) -> None:
        super().__init__()
        self.collectors: list[Any] = []

    def register(self, collector: Any) -> None:
        super().register(collector)
        self.collectors.append(collector)


def exported_metrics() -> tuple[dict[str, set[str]], set[str]]:
    """The series names every learnloop process exports, with their labels, and the histograms among them.

    Read from the code's own metric classes (one of each kind of worker, the gateway's and the lag
    exporter's), so a dashboard or rule can only name what some process really serves.
    """
    from streams.metrics import ConversationMetrics, FeedbackMetrics, PredictorMetrics, TrainerMetrics
    from workers.api.metrics import ApiMetrics
    from workers.lag.exporter import LagMetrics
    from workers.rollouts.metrics import RolloutMetrics

    kinds = (FeedbackMetrics, ConversationMetrics, TrainerMetrics, PredictorMetrics, LagMetrics, ApiMetrics,
             RolloutMetrics)
    registries = [_RecordingRegistry() for _ in kinds]
    for kind, registry in zip(kinds, registries, strict=True):
        kind(registry)
    collectors = [c for r in registries for c in r.collectors]
    metrics: dict[str, set[str]] = {}
    histograms: set[str] = set()
    for collector in collectors:
        labels = set(getattr(collector, "_labelnames", ()))  # a custom collector: its labels are not checked
        for family in collector.describe():
            name = family.name + ("_total" if family.type == "counter" else "")
            metrics[name] = labels or metrics.get(name, set())
            if family.type == "histogram":
                histograms.add(name)
    return metrics, histograms


# The metrics learnloop exports: name -> labels (besides job/instance, which Prometheus adds).
_EXPORTED, HISTOGRAMS = exported_metrics()
METRICS: dict[str, set[str]] = {
    **_EXPORTED,
    "learnloop_snapshot_age_seconds": {"topic", "partition"},  # computed at scrape time by a custom collector
    "up": set(),  # Prometheus itself
}
TARGET_LABELS = {"job", "instance"}

# Named in docker-compose.yml but wired by other changes: absent -> xfail, misspelt -> fail.
PENDING_COMMANDS: set[tuple[str, ...]] = set()
# A pending setting is excused only while its whole section is missing from Settings.
PENDING_SETTINGS: set[str] = set()

# Every learnloop process the deployment must run, and the alerts the issue asks for.
REQUIRED_SERVICES = {"migrate", "feedback", "conversations", "trainer", "rollouts", "api", "lag-exporter"}
REQUIRED_ALERTS = {
    "LearnloopConsumerLagGrowing", "LearnloopConsumerStalled", "LearnloopConsumerStopped", "LearnloopDriftStorm",
    "LearnloopDeadLetterRate", "LearnloopTrainingFailures", "LearnloopModelStale", "LearnloopTargetDown",
    "LearnloopApiErrors", "LearnloopApiSlow", "LearnloopRolloutRolledBack",
}
REQUIRED_DASHBOARDS = {"pipeline", "learners", "lag", "training", "gateway"}
# Values that must come from the operator: `${NAME:?...}` in the compose file, never a default.
SECRETS = {"LEARNLOOP_SNAPSHOT__KEY", "POSTGRES_PASSWORD", "NEO4J_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
TEST_ENV = {name: f"test-secret-{name.lower()}-0123456789" for name in SECRETS}


# ----------------------------------------------------------------------------- compose helpers

class MissingVariable(Exception):
    pass


_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
    ${NAME:?error}, ${NAME?error}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        val = env.get(name)
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op in (":?", "?") and (val is None or (op == ":?" and not val)):
            raise MissingVariable(f"{name}: {arg}")
        return val or ""

    return _VAR.sub(sub, value)


RAW_COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
COMPOSE: dict[str, Any] = interpolate(RAW_COMPOSE, TEST_ENV)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def is_learnloop(service: dict[str, Any]) -> bool:
    """Built from the repository's Dockerfile, or running the learnloop image."""
    build = service.get("build")
    context = build if isinstance(build, str) else (build or {}).get("context")
    if context is not None and (ROOT / context).resolve() == ROOT:
        return True
    image = str(service.get("image", ""))
    return image.rsplit("/", 1)[-1].split(":")[0] == "learnloop"


LEARNLOOP = {name: s for name, s in SERVICES.items() if is_learnloop(s)}
LONG_RUNNING = {name: s for name, s in LEARNLOOP.items() if s.get("restart") != "no"}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source relative to the repo, target) of each bind mount (short or long syntax)."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        if source.startswith((".", "/")):
            yield source, target


def metrics_port(name: str) -> int:
    env = env_of(LEARNLOOP[name])
    port = env.get("LEARNLOOP_METRICS__PORT") or env.get("LEARNLOOP_API__PORT")
    assert port, f"{name}: neither LEARNLOOP_METRICS__PORT nor LEARNLOOP_API__PORT is set"
    return int(port)


# ----------------------------------------------------------------------------- CLI commands

ROOT_COMMAND = typer.main.get_command(app)


def check_command(argv: list[str]) -> None:
    """Walk `learnloop ARGV` through the command groups, then let the leaf parse what is left."""
    command, args = ROOT_COMMAND, list(argv)
    path: list[str] = []
    while hasattr(command, "commands"):  # a group (typer may vendor click: no isinstance checks)
        if not args or args[0].startswith("-"):
            pytest.fail(f"`learnloop {' '.join(path)}` is a group: name one of {sorted(command.commands)}")
        name = args.pop(0)
        sub = command.commands.get(name)
        if sub is None:
            if (*path, name) in PENDING_COMMANDS:
                pytest.xfail(f"`learnloop {' '.join([*path, name])}` is not wired yet")
            close = difflib.get_close_matches(name, command.commands, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            pytest.fail(f"`learnloop {' '.join(path)}` has no command {name!r}{hint}; "
                        f"it has {sorted(command.commands)}")
        command, path = sub, [*path, name]
    try:
        command.make_context(" ".join(["learnloop", *path]), args)  # parses options; runs nothing
    except Exception as exc:  # click's (or typer's vendored click's) UsageError
        pytest.fail(f"`learnloop {' '.join(argv)}`: {exc}")


@pytest.mark.parametrize("service", sorted(LEARNLOOP))
def test_learnloop_service_command_is_a_real_cli_command(service: str) -> None:
    command = LEARNLOOP[service].get("command")
    assert isinstance(command, list) and command, f"{service}: give `command` as a list of CLI arguments"
    assert all(isinstance(a, str) for a in command), f"{service}: quote every argument: {command}"
    assert command[0] != "learnloop", f"{service}: the image's ENTRYPOINT is already `learnloop`"
    check_command(command)


def test_the_command_check_catches_typos() -> None:
    for argv in (["worker", "feedbak"], ["worker"], ["retrain", "m", "--lastn", "3"], ["db", "upgrade", "extra"]):
        with pytest.raises(pytest.fail.Exception):
            check_command(argv)
    check_command(["retrain", "m", "--last-n", "3"])
    check_command(["db", "upgrade"])


def test_every_learnloop_process_is_deployed() -> None:
    assert set(LEARNLOOP) >= REQUIRED_SERVICES, f"missing: {sorted(REQUIRED_SERVICES - set(LEARNLOOP))}"
    commands = {name: LEARNLOOP[name]["command"] for name in REQUIRED_SERVICES}
    assert commands["migrate"] == ["db", "upgrade"]
    for name in REQUIRED_SERVICES - {"migrate"}:
        assert commands[name] == ["worker", name], f"{name}: {commands[name]}"


# ----------------------------------------------------------------------------- settings

def _section(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel behind a field's annotation (also through Optional/Union), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [m for a in typing.get_args(annotation) if (m := _section(a)) is not None]
        return found[0] if len(found) == 1 else None
    return None


def settings_field(env_name: str) -> tuple[bool, list[str]]:
    """(found, the path walked) for LEARNLOOP_A__B__C in Settings, case-insensitively."""
    assert env_name.startswith("LEARNLOOP_")
    parts = env_name.removeprefix("LEARNLOOP_").lower().split("__")
    model: type[BaseModel] | None = Settings
    walked: list[str] = []
    for part in parts:
        if model is None:
            return False, walked
        fields = {name.lower(): info for name, info in model.model_fields.items()}
        if part not in fields:
            return False, walked
        walked.append(part)
        model = _section(fields[part].annotation)
    return True, walked


ENV_CASES = sorted({(svc, name) for svc, s in LEARNLOOP.items() for name in env_of(s) if name.startswith("LEARNLOOP_")})


@pytest.mark.parametrize(("service", "name"), ENV_CASES, ids=[f"{s}:{n}" for s, n in ENV_CASES])
def test_every_learnloop_env_var_is_a_real_setting(service: str, name: str) -> None:
    found, walked = settings_field(name)
    if found:
        return
    if name in PENDING_SETTINGS and not walked:
        pytest.xfail(f"{name}: settings section {name.removeprefix('LEARNLOOP_').split('__')[0].lower()!r} "
                     "is not wired yet")
    where = "Settings" + "".join(f".{p}" for p in walked)
    pytest.fail(f"{service}: {name} is not a setting (no such field under {where})")


def test_the_settings_check_catches_typos() -> None:
    assert settings_field("LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS")[0]
    assert settings_field("LEARNLOOP_LEARNERS_FILE")[0]
    assert settings_field("learnloop_redis__url".upper())[0]
    assert settings_field("LEARNLOOP_KAFKA")[0]  # a whole section, as JSON
    assert settings_field("LEARNLOOP_KAFKA__BOOTSTRAP_SERVER") == (False, ["kafka"])
    assert settings_field("LEARNLOOP_REDIS__URL__X") == (False, ["redis", "url"])
    assert settings_field("LEARNLOOP_KAFKAA__PARTITIONS") == (False, [])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("LEARNLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .learnloop/dev.env
    return monkeypatch


@pytest.mark.parametrize("service", sorted(LEARNLOOP))
def test_each_service_environment_loads_as_valid_settings(service: str, clean_env: pytest.MonkeyPatch) -> None:
    env = env_of(LEARNLOOP[service])
    for name, value in env.items():
        clean_env.setenv(name, value)
    s = load_settings()  # a bad value raises ConfigError naming the variable
    assert s.kafka.bootstrap_servers == "kafka:9092"
    assert s.redis.url.startswith("redis://redis:")
    assert s.database.url and s.database.url.startswith("postgresql://") and "@postgres:" in s.database.url
    assert s.neo4j.uri == "bolt://neo4j:7687"
    assert s.neo4j.password.get_secret_value() == TEST_ENV["NEO4J_PASSWORD"]
    assert s.mlflow.tracking_uri == "http://mlflow:5000"
    assert s.snapshot.key.get_secret_value() == TEST_ENV["LEARNLOOP_SNAPSHOT__KEY"]


@pytest.mark.parametrize("service", sorted(LEARNLOOP))
def test_the_learners_file_is_mounted_and_valid(service: str) -> None:
    target = env_of(LEARNLOOP[service])["LEARNLOOP_LEARNERS_FILE"]
    sources = [src for src, tgt in bind_mounts(LEARNLOOP[service]) if tgt == target]
    assert sources, f"{service}: nothing is mounted at LEARNLOOP_LEARNERS_FILE={target}"
    path = ROOT / sources[0]
    assert path.is_file(), f"{service}: {sources[0]} does not exist"
    assert load_learners_file(path, required=True).learners  # parses and validates


# ----------------------------------------------------------------------------- compose wiring

def test_secrets_are_required_not_defaulted() -> None:
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{([A-Za-z_]\w*):?\?", text))
    assert required == SECRETS
    for name in SECRETS:
        assert not re.search(rf"\$\{{{name}:?-", text), f"{name} has a default"
    with pytest.raises(MissingVariable, match="LEARNLOOP_SNAPSHOT__KEY"):
        interpolate(RAW_COMPOSE, {k: v for k, v in TEST_ENV.items() if k != "LEARNLOOP_SNAPSHOT__KEY"})


def test_bind_mounts_and_build_contexts_exist() -> None:
    for name, service in SERVICES.items():
        for source, _ in bind_mounts(service):
            assert not source.startswith("/"), f"{name}: {source} is outside the repository"
            assert (ROOT / source).exists(), f"{name}: {source} does not exist"
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build["context"]
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (ROOT / context / dockerfile).is_file(), f"{name}: no {context}/{dockerfile}"
        for volume in service.get("volumes") or []:
            named = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if named and not named.startswith((".", "/")):
                assert named in (COMPOSE.get("volumes") or {}), f"{name}: volume {named} is not declared"


def test_dependencies_exist_and_have_what_their_condition_needs() -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dep, spec in depends.items():
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
            condition = spec.get("condition", "service_started")
            assert condition in conditions, f"{name} -> {dep}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if condition == "service_completed_successfully":
                assert SERVICES[dep].get("restart") == "no", f"{dep} must be one-shot (restart: 'no')"
    for name in ("feedback", "trainer", "api"):
        assert SERVICES[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert SERVICES["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_long_running_services_have_health_checks_on_their_own_port() -> None:
    assert set(LONG_RUNNING) == REQUIRED_SERVICES - {"migrate"}
    for name, service in {**LONG_RUNNING, **{n: SERVICES[n] for n in ("kafka", "redis", "postgres", "neo4j",
                                                                         "mlflow", "prometheus", "grafana")}}.items():
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
    for name, service in LONG_RUNNING.items():
        probe = " ".join(service["healthcheck"]["test"])
        env = env_of(service)
        if "LEARNLOOP_METRICS__PORT" in probe:
            assert "LEARNLOOP_METRICS__PORT" in env, f"{name}: the probe reads LEARNLOOP_METRICS__PORT; it is unset"
        else:
            assert f":{metrics_port(name)}/" in probe, f"{name}: the probe does not call port {metrics_port(name)}"
        assert re.search(r"/(metrics|healthz)\b", probe), f"{name}: probe /metrics or /healthz"


def test_every_service_has_a_distinct_metrics_port() -> None:
    ports = {name: metrics_port(name) for name in LONG_RUNNING}
    assert len(set(ports.values())) == len(ports), ports
    assert ports == {"feedback": 9101, "conversations": 9102, "trainer": 9103, "rollouts": 9104, "api": 8080,
                     "lag-exporter": 9108}
    api_ports = LEARNLOOP["api"].get("ports") or []
    assert any(str(p).split(":")[-1] == "8080" for p in api_ports), "the API's port is not published"


def test_dockerfile_runs_learnloop_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    entrypoints = [i for i in instructions if i.startswith("ENTRYPOINT")]
    assert entrypoints and json.loads(entrypoints[-1].removeprefix("ENTRYPOINT").strip()) == ["learnloop"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["learnloop"] == "workers.cli:main"
    users = [i.split()[1] for i in instructions if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"pip install [^\n]*'\.\[train\]'", text)
    assert "index-url" not in text and "find-links" not in text
    for name in ("schemas", "learners", "streams", "workers"):
        assert re.search(rf"^COPY {name} {name}$", text, re.M), f"the image lacks the {name} package"


# ----------------------------------------------------------------------------- PromQL

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "atan2", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")


def base_metric(name: str) -> str | None:
    """The exported metric a series name belongs to, or None if it is not one."""
    if name in METRICS and name not in HISTOGRAMS:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return None


def promql_problems(expr: str, recorded: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Unknown metric names and labels in one PromQL expression (Grafana variables allowed)."""
    problems: list[str] = []
    text = _STRING.sub('""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries: [5m], [$__rate_interval], [1h:5m]
    names: list[str] = []
    matchers: list[tuple[str | None, list[str]]] = []
    for m in _SELECTOR.finditer(text):
        labels = re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2))
        matchers.append((m.group(1), labels))
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    grouping = [lbl.strip() for m in _GROUPING.finditer(text) for lbl in m.group(2).split(",") if lbl.strip()]
    text = _GROUPING.sub(" ", text)
    for m in _IDENT.finditer(text):
        if m.group(1).lower() not in KEYWORDS:
            names.append(m.group(1))
    names += [n for n, _ in matchers if n]
    known: set[str] = set(TARGET_LABELS)
    for name in names:
        if name in recorded:
            known = set()  # a recorded series' labels are whatever its rule kept: not checked
            continue
        base = base_metric(name)
        if base is None:
            hint = " (a histogram: use _bucket, _sum or _count)" if name in HISTOGRAMS else ""
            problems.append(f"unknown metric {name!r}{hint}")
            continue
        if known:
            known |= METRICS[base] | ({"le"} if name.endswith("_bucket") else set())
    for selected, labels in matchers:
        base = base_metric(selected) if selected else None
        if selected and base is not None:
            allowed = METRICS[base] | TARGET_LABELS | ({"le"} if selected.endswith("_bucket") else set())
            problems += [f"{selected} has no label {lbl!r}" for lbl in labels if lbl not in allowed | {"__name__"}]
    if known:
        problems += [f"no metric in this expression has the label {lbl!r}" for lbl in grouping if lbl not in known]
    if not names:
        problems.append("no metric in this expression")
    return problems


@pytest.mark.parametrize(("expr", "problem"), [
    ('sum by (topic) (rate(learnloop_events_in_total{topic=~"$t"}[$__rate_interval]))', None),
    ("histogram_quantile(0.99, sum by (le, loop) (rate(learnloop_batch_seconds_bucket[5m])))", None),
    ("learnloop:x:sum > 10 and deriv(learnloop_consumer_lag[10m]) > 0", None),
    ("rate(learnloop_events_in[5m])", "unknown metric 'learnloop_events_in'"),
    ("learnloop_batch_seconds", "a histogram"),
    ('learnloop_consumer_lag{grop="x"}', "has no label 'grop'"),
    ("sum by (learner) (learnloop_consumer_lag)", "the label 'learner'"),
])
def test_the_promql_check_catches_unknown_names(expr: str, problem: str | None) -> None:
    problems = promql_problems(expr, recorded={"learnloop:x:sum"})
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


# ----------------------------------------------------------------------------- Prometheus

PROM_CONFIG: dict[str, Any] = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
RULE_FILES = [PROM_DIR / f for f in PROM_CONFIG.get("rule_files", [])]
RULE_GROUPS = [(path.name, g) for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]
RULES = [(f, g["name"], r) for f, g in RULE_GROUPS for r in g["rules"]]
RECORDED = {r["record"] for _, _, r in RULES if "record" in r}


def test_prometheus_is_mounted_with_this_config_and_its_rule_files() -> None:
    prometheus = SERVICES["prometheus"]
    mounts = dict(bind_mounts(prometheus))
    target = mounts.get("./infra/prometheus")
    assert target, "infra/prometheus is not mounted into the prometheus service"
    assert f"--config.file={target}/prometheus.yml" in prometheus["command"]
    assert RULE_FILES and all(p.is_file() for p in RULE_FILES), "rule_files must be relative to prometheus.yml"
    assert {p.name for p in RULE_FILES} == {"alerts.yml", "recording.yml"}


@pytest.mark.parametrize("service", sorted(REQUIRED_SERVICES - {"migrate"}))
def test_prometheus_scrapes_each_service_on_its_port(service: str) -> None:
    port = metrics_port(service)
    jobs = {j["job_name"]: j for j in PROM_CONFIG["scrape_configs"]}
    job = jobs.get(f"learnloop-{service}")
    assert job, f"no scrape job learnloop-{service}"
    targets = [f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]]
    targets += [t for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert f"{service}:{port}" in targets
    assert job.get("metrics_path", "/metrics") == "/metrics"


@pytest.mark.parametrize(("file", "group", "rule"), RULES, ids=[r.get("alert") or r["record"] for _, _, r in RULES])
def test_rule_is_well_formed_and_uses_known_metrics(file: str, group: str, rule: dict[str, Any]) -> None:
    assert isinstance(rule.get("expr"), str) and rule["expr"].strip()
    assert promql_problems(rule["expr"], RECORDED) == []
    if "alert" in rule:
        assert re.fullmatch(r"Learnloop[A-Z]\w+", rule["alert"])
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description")
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
    else:
        assert re.fullmatch(r"learnloop:[a-z_]+:[a-z0-9_]+", rule["record"]), "level:metric:operations"


def test_rule_names_are_unique_and_the_required_alerts_exist() -> None:
    alerts = [r["alert"] for _, _, r in RULES if "alert" in r]
    records = [r["record"] for _, _, r in RULES if "record" in r]
    assert len(alerts) == len(set(alerts)) and len(records) == len(set(records))
    assert set(alerts) >= REQUIRED_ALERTS, sorted(REQUIRED_ALERTS - set(alerts))
    assert len({g["name"] for _, g in RULE_GROUPS}) == len(RULE_GROUPS)


def test_the_rule_unit_tests_cover_every_alert() -> None:
    spec = yaml.safe_load((PROM_DIR / "tests" / "alerts.test.yml").read_text())
    for f in spec["rule_files"]:
        assert (PROM_DIR / "tests" / f).resolve() in {p.resolve() for p in RULE_FILES}
    tested = {case["alertname"] for t in spec["tests"] for case in t.get("alert_rule_test", [])}
    assert {r["alert"] for _, _, r in RULES if "alert" in r} <= tested


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


@needs_promtool
@pytest.mark.parametrize("args", [
    ["check", "config", "prometheus.yml"],
    ["check", "rules", "alerts.yml", "recording.yml"],
    ["test", "rules", "tests/alerts.test.yml"],
], ids=["check-config", "check-rules", "test-rules"])
def test_promtool(args: list[str]) -> None:
    assert PROMTOOL is not None
    out = subprocess.run([PROMTOOL, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------------------------------- Grafana

DATASOURCES = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
DATASOURCE_UID = DATASOURCES["datasources"][0]["uid"]
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                     "__all", "__name", "__dashboard"}


def test_grafana_provisioning_is_mounted_where_it_points() -> None:
    mounts = dict(bind_mounts(SERVICES["grafana"]))
    assert mounts.get("./infra/grafana/provisioning") == "/etc/grafana/provisioning"
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    assert paths == {mounts.get("./infra/grafana/dashboards")}
    home = env_of(SERVICES["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    if home:
        assert home.rsplit("/", 1)[0] in paths and (DASHBOARD_DIR / home.rsplit("/", 1)[1]).is_file()


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    (ds,) = DATASOURCES["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] and ds.get("isDefault")
    host, port = re.fullmatch(r"http://([\w.-]+):(\d+)/?", ds["url"]).groups()  # type: ignore[union-attr]
    assert host in SERVICES and port == "9090"


def test_dashboards_exist_with_unique_uids_and_titles() -> None:
    assert {p.stem for p in DASHBOARD_FILES} >= REQUIRED_DASHBOARDS
    boards = [json.loads(p.read_text()) for p in DASHBOARD_FILES]
    uids = [b["uid"] for b in boards]
    assert len(uids) == len(set(uids)) and all(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", u) for u in uids)
    titles = [b["title"] for b in boards]
    assert len(titles) == len(set(titles))


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_dashboard_is_valid_and_queries_known_metrics(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board.get("id") is None, "provisioned dashboards carry no database id"
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    variables = {v["name"] for v in board.get("templating", {}).get("list", [])}
    problems: list[str] = []

    def check(where: str, expr: str) -> None:
        problems.extend(f"{where}: {p}" for p in promql_problems(expr, RECORDED))
        for var in re.findall(r"\$\{?(\w+)", expr):
            if var not in variables | BUILTIN_VARIABLES:
                problems.append(f"{where}: undefined variable ${var}")

    def check_datasource(where: str, ds: Any) -> None:
        if isinstance(ds, dict) and ds.get("type") != "grafana" and ds.get("uid") != DATASOURCE_UID:
            problems.append(f"{where}: datasource {ds} is not {DATASOURCE_UID!r}")

    for var in board.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        check_datasource(f"variable {var['name']}", var.get("datasource"))
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert m, f"variable {var['name']}: expected label_values(selector, label), got {query!r}"
        check(f"variable {var['name']}", m.group(1))
        base = base_metric(_SELECTOR.sub(lambda s: s.group(1) or "", m.group(1)).strip())
        if base is not None and m.group(2) not in METRICS[base]:
            problems.append(f"variable {var['name']}: {base} has no label {m.group(2)!r}")
    for ann in board.get("annotations", {}).get("list", []):
        check_datasource(f"annotation {ann['name']}", ann.get("datasource"))
        if ann.get("expr"):
            check(f"annotation {ann['name']}", ann["expr"])

    ids: list[int] = []
    cells: set[tuple[int, int]] = set()
    for panel in _panels(board):
        ids.append(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"panel {panel['title']!r} is off the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        where = f"panel {panel['title']!r}"
        check_datasource(where, panel.get("datasource"))
        targets = panel.get("targets") or []
        assert targets, f"{where} has no query"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"{where}: duplicate refIds"
        for t in targets:
            check_datasource(where, t.get("datasource"))
            check(where, t["expr"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert problems == []


def test_docker_compose_config_accepts_the_file() -> None:
    """With a compose CLI here, it must accept the file too (no engine needed for `config`)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` here")
    out = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, **TEST_ENV}, timeout=60)
    assert out.returncode == 0, out.stderr
