"""Settings section ``api``: where the gateway listens, its limits, and its API keys (hashed)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.api.keys import KEY_NAME_PATTERN

Scope = Literal["read", "write", "predict", "jobs:read", "jobs:write"]
"""``read``: status routes; ``write``: the ingest routes; ``predict``: ``POST /v1/predict/{learner}``;
``jobs:read`` / ``jobs:write``: follow / submit and cancel fine-tuning jobs (``/v1/jobs``)."""


class ApiKey(BaseModel):
    """One client's key, stored as its SHA-256 (``python -m workers.api.keys new NAME`` makes one).

    >>> ApiKey(name="shop-web", sha256="AB" * 32, scopes=["write", "read"]).scopes
    ('read', 'write')
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=KEY_NAME_PATTERN, description="who holds the key; the default source of their events")
    sha256: str = Field(pattern=r"^[0-9A-Fa-f]{64}$", description="hex SHA-256 of the key")
    scopes: tuple[Scope, ...] = Field(default=("read",), min_length=1)

    @field_validator("sha256")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @field_validator("scopes")
    @classmethod
    def _sorted(cls, v: tuple[Scope, ...]) -> tuple[Scope, ...]:
        return tuple(sorted(set(v)))


class ApiConfig(BaseModel):
    """The HTTP gateway (``learnloop worker api``).

    ``/healthz``, ``/readyz``, ``/metrics``, the OpenAPI document, ``/docs`` and the
    status page's HTML need no key; the ``/v1`` routes need a ``read`` key (or
    ``allow_anonymous_read``), the ingest POST routes a ``write`` key and
    ``POST /v1/predict/{learner}`` a ``predict`` key (``write`` does not imply it: a
    key that may feed the learners is not thereby a key that may query them).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    keys: list[ApiKey] = Field(default_factory=list)
    allow_anonymous_read: bool = False
    produce_timeout_s: float = Field(default=15.0, gt=0, description="broker acknowledgement of a request's events")
    ready_timeout_s: float = Field(default=2.0, gt=0, description="each /readyz probe (broker, Redis)")
    # The status page's charts: the gateway samples the learners' statuses this often and keeps, in Redis,
    # this many points per learner (720 every 5 s: an hour of steady learning; an idle learner adds none).
    history_every_s: float = Field(default=5.0, gt=0, le=3600, description="seconds between history samples")
    history_points: int = Field(default=720, ge=2, le=100_000, description="points kept per learner")

    @field_validator("keys")
    @classmethod
    def _unique(cls, v: list[ApiKey]) -> list[ApiKey]:
        names = [k.name for k in v]
        hashes = [k.sha256 for k in v]
        if len(set(names)) != len(names) or len(set(hashes)) != len(hashes):
            raise ValueError("key names and hashes must be unique")
        return v
