"""The learners file: which model each learner runs, how feedback becomes labels, drift settings.

A learners file is TOML::

    strict = false                      # true: events for undeclared learners are refused

    [learners.default]                  # serves every learner not declared below
    model = "logistic_regression"

    [learners.sea]
    task = "binary"
    model = "hoeffding_adaptive_tree"
    retrain_model = "sea-classifier"

    [learners.sea.params]               # River constructor arguments
    grace_period = 100

    [learners.sea.drift]
    delta = 0.002

    [learners.sea.input_drift]          # optional: watch the inputs themselves
    max_features = 20

    [learners.sea.labels.signals.click]
    label = true
    weight = 0.4

Every mistake surfaces as one ``ConfigError`` line naming the file and the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from learners.models import accepted_params, build_estimator, estimator_class, models_for
from learners.monitors.specs import InputDriftSpec, PerformanceEstimateSpec, PredictionDriftSpec
from learners.retrain_policy import RetrainPolicySpec
from learners.rollout.policy import RolloutPolicy
from schemas.errors import ConfigError, UnknownLearner

__all__ = [
    "DEFAULT_SIGNALS",
    "DriftSpec",
    "LabelSpec",
    "LearnerSpec",
    "LearnersConfig",
    "SignalRule",
    "load_learners_file",
]

ParamValue = float | int | str | bool

# The model a task gets when the learners file names only the task.
_DEFAULT_MODEL = {
    "binary": "logistic_regression",
    "multiclass": "hoeffding_adaptive_tree",
    "regression": "linear_regression",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DriftSpec(_Frozen):
    """ADWIN settings for one learner's error stream.

    >>> DriftSpec(delta=0.01).cooldown
    1000
    """

    delta: float = Field(default=0.002, gt=0, lt=1)
    cooldown: int = Field(default=1000, ge=0, description="events between two reported drifts")
    grace: int = Field(default=30, ge=0, description="no drift is reported before this many learned events")
    # A model whose error falls needs no retraining: by default only rises are drifts.
    direction: Literal["increase", "any"] = "increase"


class SignalRule(_Frozen):
    """What an implicit signal means: the label it stands for and how much it counts.

    >>> SignalRule(label=True, weight=0.5)
    SignalRule(label=True, weight=0.5)
    """

    label: bool | int | float | str
    weight: float = Field(default=1.0, gt=0)


DEFAULT_SIGNALS: dict[str, SignalRule] = {
    "thumbs_up": SignalRule(label=True, weight=1.0),
    "thumbs_down": SignalRule(label=False, weight=1.0),
    "click": SignalRule(label=True, weight=0.5),
    "copy": SignalRule(label=True, weight=0.7),
    "share": SignalRule(label=True, weight=0.8),
    "skip": SignalRule(label=False, weight=0.5),
    "regenerate": SignalRule(label=False, weight=0.7),
}


class LabelSpec(_Frozen):
    """How ratings and implicit signals become labels; ``signals`` merge over ``DEFAULT_SIGNALS``.

    >>> spec = LabelSpec(signals={"click": {"label": True, "weight": 0.2}})
    >>> spec.signals["click"].weight, spec.signals["thumbs_up"].weight
    (0.2, 1.0)
    """

    rating_threshold: float = 0.5
    signals: dict[str, SignalRule] = Field(default_factory=lambda: dict(DEFAULT_SIGNALS))
    dwell_ms_threshold: float = Field(default=10000, ge=0)
    dwell_ms_weight: float = Field(default=0.3, gt=0)

    @field_validator("signals", mode="before")
    @classmethod
    def _merge_over_defaults(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value  # pydantic reports the type error
        if "dwell_ms" in value:
            raise ValueError("dwell_ms is mapped by dwell_ms_threshold/dwell_ms_weight, not by a signal rule")
        return {**DEFAULT_SIGNALS, **value}


class LearnerSpec(_Frozen):
    """One learner: task, River model and its parameters, labels, drift.

    ``model`` defaults to the task's usual model (logistic_regression for binary,
    hoeffding_adaptive_tree for multiclass, linear_regression for regression).

    >>> LearnerSpec().model
    'logistic_regression'
    >>> LearnerSpec(task="regression").model
    'linear_regression'
    """

    task: Literal["binary", "multiclass", "regression"] = "binary"
    model: Literal[
        "logistic_regression",
        "passive_aggressive",
        "hoeffding_adaptive_tree",
        "adaptive_random_forest",
        "linear_regression",
        "naive_bayes",
    ] = "logistic_regression"
    params: dict[str, ParamValue] = Field(default_factory=dict)
    retrain_model: str | None = None
    retrain_policy: RetrainPolicySpec = RetrainPolicySpec()
    drift: DriftSpec = DriftSpec()
    labels: LabelSpec = LabelSpec()
    rolling_window: int = Field(default=1000, ge=1)
    seed: int = 42
    # Monitors that see drift before labels arrive; each runs only when its section is present.
    input_drift: InputDriftSpec | None = None
    prediction_drift: PredictionDriftSpec | None = None
    performance_estimate: PerformanceEstimateSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _model_follows_task(cls, data: object) -> object:
        if isinstance(data, Mapping) and "model" not in data and data.get("task") in _DEFAULT_MODEL:
            return {**data, "model": _DEFAULT_MODEL[data["task"]]}
        return data

    @field_validator("model")
    @classmethod
    def _model_fits_task(cls, model: str, info: ValidationInfo) -> str:
        task = info.data.get("task")
        if task is not None and model not in models_for(task):
            raise ValueError(f"{model} does not fit task {task!r}; choose one of {', '.join(models_for(task))}")
        return model

    @field_validator("params")
    @classmethod
    def _params_known_to_river(cls, params: dict[str, ParamValue], info: ValidationInfo) -> dict[str, ParamValue]:
        task, model = info.data.get("task"), info.data.get("model")
        if task is None or model is None:
            return params  # task/model already failed; their error is the useful one
        accepted = accepted_params(task, model)
        river_name = estimator_class(task, model).__name__
        for name in params:
            if name == "seed":
                raise ValueError("seed is set by the learner's own 'seed' key, not under params")
            if name not in accepted:
                known = ", ".join(sorted(accepted)) or "none"
                raise ValueError(f"unknown parameter {name!r} for River {river_name} (accepted: {known})")
        if params:
            try:
                # Many River arguments are only used on the first learn_one, so try one.
                estimator: Any = build_estimator(task, model, params, seed=0)
                estimator.learn_one({"x": 1.0}, 1.0 if task == "regression" else True)
                estimator.predict_one({"x": 1.0})
            except Exception as exc:  # reported, not hidden: any failure means these params are unusable
                raise ValueError(f"River {river_name} refused these params: {exc}") from exc
        return params


class LearnersConfig(_Frozen):
    """Every declared learner, plus the fallback rule for the rest.

    >>> config = LearnersConfig.from_mapping({"learners": {"sea": {"drift": {"delta": 0.01}}}})
    >>> config.resolve("sea").drift.delta, config.resolve("other").drift.delta
    (0.01, 0.002)
    >>> config.declared
    ('sea',)
    """

    learners: dict[str, LearnerSpec] = Field(default_factory=dict)
    strict: bool = False
    #: ``[rollouts.MODEL]``: how a challenger of MODEL is rolled out (over the settings' defaults).
    rollouts: dict[str, RolloutPolicy] = Field(default_factory=dict)

    @field_validator("learners")
    @classmethod
    def _names_are_keys(cls, learners: dict[str, LearnerSpec]) -> dict[str, LearnerSpec]:
        for name in learners:
            if not name or name != name.strip() or any(ch.isspace() for ch in name):
                raise ValueError(f"learner name {name!r} must be non-empty and contain no whitespace")
        return learners

    def rollout_policy(self, model: str, default: RolloutPolicy) -> RolloutPolicy | None:
        """``model``'s policy: its section over ``default``; ``None`` when the file has no section for it.

        >>> c = LearnersConfig.from_mapping({"rollouts": {"m": {"min_labels": 5, "guardrails": {"min_requests": 3}}}})
        >>> p = c.rollout_policy("m", RolloutPolicy(steps=[10, 100]))
        >>> p.steps, p.min_labels, p.guardrails.min_requests, p.guardrails.max_p95_latency_ratio
        ([10.0, 100.0], 5, 3, 1.5)
        """
        own = self.rollouts.get(model)
        if own is None:
            return None
        merged = default.model_dump()
        for key, value in own.model_dump(exclude_unset=True).items():
            merged[key] = {**merged[key], **value} if key == "guardrails" else value
        return RolloutPolicy.model_validate(merged)

    @property
    def declared(self) -> tuple[str, ...]:
        """Names declared in the file, in file order ("default" included when declared)."""
        return tuple(self.learners)

    def resolve(self, name: str) -> LearnerSpec:
        """The spec for ``name``: its own, else ``default`` (or the built-in one) unless strict."""
        spec = self.learners.get(name)
        if spec is not None:
            return spec
        if self.strict:
            raise UnknownLearner(name)
        return self.learners.get("default") or _BUILTIN_DEFAULT

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "learners config") -> LearnersConfig:
        """Validate already-parsed data; errors are one ``ConfigError`` line prefixed by ``source``."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_one_line(exc)}") from None


_BUILTIN_DEFAULT = LearnerSpec()


def load_learners_file(path: str | Path | None, *, required: bool = False) -> LearnersConfig:
    """Parse a learners TOML file; a missing file means the built-in default unless ``required``."""
    if path is None:
        if required:
            raise ConfigError("learners file not found: no path given")
        return LearnersConfig()
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"learners file not found: {path}") from None
        return LearnersConfig()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read learners file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return LearnersConfig.from_mapping(data, source=str(path))


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    line = f"{loc}: {message}" if loc else message
    if first["type"] != "missing" and "input" in first and not isinstance(first["input"], Mapping):
        line += f" (got {first['input']!r})"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return line.replace("\n", " ")
