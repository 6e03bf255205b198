"""One typed settings object, loaded once at the entry point and passed down.

Environment variables use the prefix ``LEARNLOOP_`` and ``__`` for nesting, e.g.
``LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or ``LEARNLOOP_REDIS__URL``.
Nothing else in the project reads the environment.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from learners.config import LearnersConfig, load_learners_file
from learners.finetune import FineTuneConfig
from learners.knowledge.config import NlpConfig
from schemas.errors import ConfigError
from streams.config import FeedbackConfig, KafkaConfig, ServingConfig
from workers.api.config import ApiConfig
from workers.lag.config import LagConfig
from workers.rollouts.config import RolloutConfig
from workers.store.config import DatabaseConfig, redact_url
from workers.trainer.config import MlflowConfig, TrainerConfig

DEV_SNAPSHOT_KEY = "learnloop-dev-only-snapshot-key"
DEV_ENV_FILE = ".learnloop/dev.env"
METRICS_PORTS = {"feedback": 9101, "conversations": 9102, "trainer": 9103, "rollouts": 9104}  # each worker's default


class RedisConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field(default="learnloop:", max_length=64)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v


class SnapshotConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # HMAC key for learner snapshots. The default is for the embedded stack only;
    # workers log a warning when they run with it against a non-loopback broker.
    key: SecretStr = SecretStr(DEV_SNAPSHOT_KEY)

    @field_validator("key")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value().encode()) < 16:
            raise ValueError("must be at least 16 bytes")
        return v


class Neo4jConfig(BaseModel):
    """Production knowledge graph. With no ``uri`` the embedded graph (LadybugDB) is used."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str | None = None
    user: str = "neo4j"
    password: SecretStr = SecretStr("")
    database: str | None = None

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("bolt://", "bolt+s://", "bolt+ssc://", "neo4j://", "neo4j+s://",
                                               "neo4j+ssc://")):
            raise ValueError("must be a bolt:// or neo4j:// URI")
        return v


class GraphConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | None = Field(default=None, description="embedded graph folder (default: DATA_DIR/graph)")
    retries: int = Field(default=5, ge=0, le=100)
    backoff_s: float = Field(default=0.2, gt=0)
    # LadybugDB's query threads. The conversation worker writes while spaCy extracts the next
    # batch on another thread; one engine thread keeps the write from competing with it for cores
    # (the batch writes are small). 0 lets the engine use every core.
    threads: int = Field(default=1, ge=0, le=256)


class ConversationsConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = "learnloop-conversations"
    batch_max_records: int = Field(default=256, ge=1, le=10_000)
    batch_timeout_ms: int = Field(default=100, ge=1, le=60_000)


class MetricsConfig(BaseModel):
    """Where a worker serves Prometheus ``/metrics`` (``LEARNLOOP_METRICS__PORT``, ``LEARNLOOP_METRICS__HOST``).

    With no ``port`` each worker takes its own default (:data:`METRICS_PORTS`), so the workers
    of ``learnloop dev`` share a host; ``0`` turns the endpoint off. In a container, set
    ``host`` to ``0.0.0.0`` so that Prometheus can reach it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65_535, description="default: the worker's own; 0: off")

    def port_for(self, worker: Literal["feedback", "conversations", "trainer", "rollouts"]) -> int | None:
        """The port ``worker`` serves its metrics on; ``None`` when it serves none."""
        port = METRICS_PORTS[worker] if self.port is None else self.port
        return port or None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEARNLOOP_",
        env_nested_delimiter="__",
        # `learnloop dev` writes its loopback addresses here while it runs, so other
        # commands in the same directory find the embedded stack; real env vars win.
        env_file=DEV_ENV_FILE,
        frozen=True,
        extra="ignore",
    )

    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    serving: ServingConfig = ServingConfig()
    nlp: NlpConfig = NlpConfig()
    neo4j: Neo4jConfig = Neo4jConfig()
    graph: GraphConfig = GraphConfig()
    conversations: ConversationsConfig = ConversationsConfig()
    database: DatabaseConfig = DatabaseConfig()
    training: FineTuneConfig = FineTuneConfig()
    mlflow: MlflowConfig = MlflowConfig()
    trainer: TrainerConfig = TrainerConfig()
    metrics: MetricsConfig = MetricsConfig()
    api: ApiConfig = ApiConfig()
    lag: LagConfig = LagConfig()
    rollout: RolloutConfig = RolloutConfig()
    learners_file: Path = Path("learners.toml")
    data_dir: Path = Path(".learnloop")
    source: str = Field(default="learnloop", min_length=1, max_length=128)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def graph_path(self) -> Path:
        return self.graph.path or self.data_dir / "graph"

    def load_learners(self) -> LearnersConfig:
        """The learners file, validated as every worker and `learnloop learners` read it.

        Only the default path may be absent (the built-in default learner then applies): a
        file named by ``LEARNLOOP_LEARNERS_FILE`` that does not exist is an error, not defaults.
        """
        explicit = "learners_file" in self.model_fields_set
        if explicit and not self.learners_file.exists():
            raise ConfigError(f"LEARNLOOP_LEARNERS_FILE: no such file: {self.learners_file}")
        return load_learners_file(self.learners_file, required=explicit)


def _without_password(value: object) -> object:
    # A URL's userinfo is how Redis (and others) take a password: never echo it.
    return redact_url(value) if isinstance(value, str) else value


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value becomes one ConfigError line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:  # e.g. LEARNLOOP_KAFKA='{not json' or LEARNLOOP_NLP__GAZETTEER=notjson
        field = re.search(r'field "([^"]+)"', str(exc))
        names = _unparsable_variables(field.group(1)) if field else []
        if names:
            raise ConfigError(f"{', '.join(names)}: cannot parse the value as JSON (this setting takes a JSON "
                              "list or object)") from None
        name = f"LEARNLOOP_{field.group(1).upper()}" if field else "LEARNLOOP_*"
        raise ConfigError(f"{name}: cannot parse the value (a section given whole must be a JSON object)") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = "__".join(str(p) for p in first["loc"]).upper()
        name = f"LEARNLOOP_{loc}" if loc else "LEARNLOOP_*"
        msg = first["msg"].removeprefix("Value error, ")
        got = _without_password(first.get("input"))
        secret = any(w in loc for w in ("KEY", "PASSWORD", "SECRET"))
        echoed = isinstance(got, str) and repr(got) in msg
        shown = "" if isinstance(got, dict) or secret or echoed else f" (got {got!r})"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{name}: {msg}{shown}{more}") from None


def _unparsable_variables(field: str) -> list[str]:
    """The variables set for section ``field`` whose value must be JSON and is not (name them, not the section)."""
    prefix = f"LEARNLOOP_{field}".upper()
    section = Settings.model_fields[field].annotation if field in Settings.model_fields else None
    names = []
    for name, value in os.environ.items():  # settings.py is the one place that reads the environment
        upper = name.upper()
        if upper == prefix:
            path: list[str] = []
        elif upper.startswith(prefix + "__"):
            path = upper[len(prefix) + 2 :].lower().split("__")
        else:
            continue
        if _takes_json(section, path) and not _is_json(value):
            names.append(name)
    return sorted(names)


def _takes_json(annotation: Any, path: list[str]) -> bool:
    # pydantic-settings decodes a variable as JSON when its field holds a model, a list or a map.
    for part in path:
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if not is_model or part not in annotation.model_fields:
            return False
        annotation = annotation.model_fields[part].annotation
    kinds = [annotation, *get_args(annotation)] if get_origin(annotation) in (Union, UnionType) else [annotation]
    return any(
        get_origin(k) in (list, dict, tuple, set, frozenset) or (isinstance(k, type) and issubclass(k, BaseModel))
        for k in kinds
    )


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True
