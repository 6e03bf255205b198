"""Tracking and registry: one MLflow run per training job, model versions, aliases, announcements.

``ModelRegistry`` wraps MLflow for the training worker. Runs and model
versions live in the configured tracking store (default: SQLite in the data
dir), artifacts in the configured artifact location (default: ``mlartifacts``
in the data dir) and never in ``./mlruns``. A registered version is the
stand-alone serving model of ``serving_model.py`` plus the Hugging Face folder
it loads, so ``mlflow.pyfunc.load_model("models:/NAME/VERSION")`` serves it in
any MLflow-aware service. ``model_update`` builds the event that announces it.

MLflow's fluent API keeps its tracking URI and active run in process state;
the registry points that state at its own store before each call, so one
registry per process (the training worker) is the intended use.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from schemas import DataWindow, Lineage, ModelUpdate
from workers.trainer.config import MlflowConfig as MlflowConfig  # the settings section, kept light

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars garble worker logs

import mlflow
import mlflow.artifacts
import mlflow.models
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient

with warnings.catch_warnings():
    # On import, mlflow.pyfunc infers schemas of its own agent types and warns about their `Any` fields.
    warnings.filterwarnings("ignore", message=".*Any type hint is inferred as AnyType", category=UserWarning)
    import mlflow.pyfunc

log = logging.getLogger(__name__)

SERVING_MODEL = Path(__file__).with_name("serving_model.py")
"""The models-from-code file every registered version carries."""
JOB_TAG = "learnloop.job_id"
"""Run and version tag holding the training job id (crash recovery looks versions up by it)."""
MODEL_TAG = "learnloop.model"
BASE_MODEL_TAG = "learnloop.base_model"
BASE_REVISION_TAG = "learnloop.base_model_revision"
"""Version tags naming the base model a version was fine-tuned from, and its revision."""
INPUT_COLUMN = "text"
"""The one input column of every registered text model (its signature refuses any other)."""
SERVING_REQUIREMENTS = ("mlflow", "torch", "transformers", "pandas", "numpy")
"""Pinned into every version's requirements: inferring them costs seconds per model."""
_MAX_PARAM = 6000  # MLflow's limit on a parameter value


@dataclass(frozen=True)
class TrainingRun:
    """The MLflow run of one training job (what ``ModelRegistry.start_run`` yields)."""

    run_id: str
    job_id: str
    model: str
    client: MlflowClient

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(name, float(value), now, step or 0) for name, value in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's batch limits: 1000 metrics, 100 params
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        batch = [Param(name, value) for name, value in _flatten(params).items()]
        for i in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[i : i + 100])

    def log_dict(self, name: str, obj: Mapping[str, Any]) -> None:
        """A JSON artifact, e.g. the dataset summary (``dataset.json``)."""
        self.client.log_dict(self.run_id, dict(obj), name)

    def log_artifact_dir(self, path: Path, name: str) -> None:
        """Every file under ``path``, as the run's artifact folder ``name``."""
        self.client.log_artifacts(self.run_id, str(path), artifact_path=name)


class ModelRegistry:
    """Runs, registered versions and aliases in MLflow.

    Typical use by the trainer::

        registry = ModelRegistry(settings.mlflow, settings.data_dir)
        with registry.start_run(job_id, "sea-text", {"lr": 2e-4}) as run:
            run.log_dict("dataset.json", summary)
            run.log_metrics({"f1": 0.91})
            version = registry.register(run, model_dir, "sea-text", tags={"reason": "drift"})
        registry.set_alias("sea-text", "challenger", version)
    """

    def __init__(self, config: MlflowConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.tracking_uri = config.resolved_tracking_uri(data_dir)
        self.artifact_location = config.resolved_artifact_location(data_dir)
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = mlflow_client(self.tracking_uri)
        self._experiment_id: str | None = None
        self._lock = threading.RLock()

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.config.experiment)
            if found is None:
                with contextlib.suppress(MlflowException):  # a concurrent worker may create it first
                    self.client.create_experiment(self.config.experiment, artifact_location=self.artifact_location)
                found = self.client.get_experiment_by_name(self.config.experiment)
                assert found is not None
            elif found.artifact_location != self.artifact_location:
                log.warning(
                    "experiment %r keeps artifacts in %s (configured: %s); MLflow fixes it at creation",
                    self.config.experiment,
                    found.artifact_location,
                    self.artifact_location,
                )
            self._experiment_id = str(found.experiment_id)
        return self._experiment_id

    @contextlib.contextmanager
    def _fluent(self) -> Iterator[None]:
        # log_model and load_model only exist in MLflow's fluent API, which reads process state.
        with self._lock:
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            yield

    @contextlib.contextmanager
    def start_run(self, job_id: str, model: str, params: Mapping[str, Any]) -> Iterator[TrainingRun]:
        """One run per job: tagged with the job and model, params logged; FAILED if the block raises."""
        tags = {JOB_TAG: job_id, MODEL_TAG: model}
        run = self.client.create_run(self.experiment_id, run_name=f"{model}-{job_id}"[:250], tags=tags)
        handle = TrainingRun(run.info.run_id, job_id, model, self.client)
        try:
            handle.log_params(params)
            yield handle
        except BaseException:
            self.client.set_terminated(handle.run_id, status="FAILED")
            raise
        self.client.set_terminated(handle.run_id, status="FINISHED")

    def register(
        self,
        run: TrainingRun,
        model_dir: Path,
        model_name: str,
        *,
        tags: Mapping[str, str] | None = None,
        base_model: Mapping[str, str] | None = None,
    ) -> str:
        """Log ``model_dir`` as the serving model of ``run``; register it as a new version of ``model_name``.

        The version is tagged with the job id in the same call that creates it, so a
        worker that crashes after this line finds it again with ``version_for_job``.
        ``base_model`` (``name`` and ``revision``, see ``learners.finetune.base_model_identity``)
        is tagged on the version and kept in the model's metadata; without it, the
        ``_name_or_path`` of the folder's config and a hash of its files stand in.
        """
        signature = _signature(_read_labels(model_dir))
        base = dict(base_model) if base_model is not None else _folder_identity(model_dir)
        version_tags = {
            **{k: str(v) for k, v in (tags or {}).items()},
            JOB_TAG: run.job_id,
            MODEL_TAG: model_name,
            BASE_MODEL_TAG: base["name"],
            BASE_REVISION_TAG: base["revision"],
        }
        with self._fluent():
            # log_model attaches the model to the fluent API's active run, so make ours the active one.
            with mlflow.start_run(run_id=run.run_id), warnings.catch_warnings():
                # MLflow turns the example's index into a list with a pandas operation that pandas deprecates.
                warnings.filterwarnings("ignore", message="Operation with range is deprecated")
                # The input example is what `mlflow models serve` documents and checks the signature against.
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(SERVING_MODEL),
                    artifacts={"model_dir": str(model_dir)},
                    pip_requirements=pinned_requirements(),
                    signature=signature,
                    input_example=_input_example(),
                    metadata={"learnloop_job_id": run.job_id, "base_model": base},
                )
            version = mlflow.register_model(info.model_uri, model_name, tags=version_tags)
        log.info("registered %s version %s (run %s)", model_name, version.version, run.run_id)
        return str(version.version)

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, alias, version)

    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or None (no such alias or model)."""
        try:
            return str(self.client.get_model_version_by_alias(model_name, alias).version)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def versions(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """Every version of ``model_name`` (all registered models when None), oldest first per model."""
        if model_name is None:
            found = list(self.client.search_model_versions())
            registered = list(self.client.search_registered_models())
        else:
            found = list(self.client.search_model_versions(f"name = '{_quoted(model_name)}'"))
            registered = [self.client.get_registered_model(model_name)] if found else []
        # Version search results leave `aliases` empty; the registered model holds them.
        aliases: dict[tuple[str, str], list[str]] = {}
        for rm in registered:
            for alias, version in (rm.aliases or {}).items():
                aliases.setdefault((rm.name, str(version)), []).append(alias)
        metrics: dict[str, dict[str, float]] = {}
        out = []
        for mv in sorted(found, key=lambda v: (v.name, int(v.version))):
            if mv.run_id and mv.run_id not in metrics:
                try:
                    metrics[mv.run_id] = dict(self.client.get_run(mv.run_id).data.metrics)
                except MlflowException:  # the run was deleted; the version outlives it
                    metrics[mv.run_id] = {}
            created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None
            out.append(
                {
                    "name": mv.name,
                    "version": str(mv.version),
                    "aliases": sorted(aliases.get((mv.name, str(mv.version)), [])),
                    "run_id": mv.run_id,
                    "created_at": created.isoformat() if created else None,
                    "tags": dict(mv.tags or {}),
                    "metrics": metrics.get(mv.run_id or "", {}),
                }
            )
        return out

    def version_for_job(self, model_name: str, job_id: str) -> str | None:
        """The version an earlier attempt of ``job_id`` registered, if any (recovery after a crash)."""
        hits = [v["version"] for v in self.versions(model_name) if v["tags"].get(JOB_TAG) == job_id]
        return max(hits, key=int) if hits else None

    def load(self, uri: str) -> Any:
        """The pyfunc model at ``uri`` (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ...)."""
        with self._fluent():
            return load_pyfunc(uri)

    def model_dir(self, model_name: str, version: str, dest: Path) -> Path:
        """Download the Hugging Face folder (model, tokenizer, labels.json) of a version into ``dest``."""
        root = self.client.get_model_version_download_uri(model_name, version).rstrip("/")
        with self._fluent():
            flavor = mlflow.models.Model.load(self.uri(model_name, version)).flavors["python_function"]
            dest.mkdir(parents=True, exist_ok=True)
            uri = f"{root}/{flavor['artifacts']['model_dir']['path']}"
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))

    @staticmethod
    def uri(model_name: str, version: str) -> str:
        return f"models:/{model_name}/{version}"


def mlflow_client(tracking_uri: str) -> MlflowClient:
    with warnings.catch_warnings():
        _ignore_store_import_warning()
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def load_pyfunc(uri: str) -> Any:
    """``mlflow.pyfunc.load_model`` with the one import-time warning of MLflow's SQL store silenced."""
    with warnings.catch_warnings():
        _ignore_store_import_warning()
        return mlflow.pyfunc.load_model(uri)


def _ignore_store_import_warning() -> None:
    # MLflow's SQL store module configures a `noload` relationship that SQLAlchemy 2.1 deprecates;
    # it fires once, when the store is first imported, and is MLflow's to fix.
    warnings.filterwarnings(
        "ignore", message="The ``noload`` loader strategy is deprecated", category=DeprecationWarning
    )


def model_update(
    model: str,
    version: str,
    alias: str,
    metrics: Mapping[str, float],
    *,
    parent_version: str | None,
    data_window: DataWindow | None,
    n_samples: int | None,
    code_version: str | None,
    source: str,
) -> ModelUpdate:
    """The event announcing a registered version on ``learnloop.model-updates``.

    >>> update = model_update("sea-text", "3", "challenger", {"f1": 0.9, "loss": float("nan")},
    ...                       parent_version="2", data_window=None, n_samples=500, code_version="0.1.0",
    ...                       source="trainer")
    >>> update.uri, update.metrics, update.lineage.parent_version
    ('models:/sea-text/3', {'f1': 0.9}, '2')
    """
    finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    if len(finite) != len(metrics):  # the wire takes finite numbers only; say what was left out
        log.warning(
            "%s v%s: metrics %s are not finite and are not announced",
            model,
            version,
            sorted(set(metrics) - set(finite)),
        )
    return ModelUpdate(
        source=source,
        model=model,
        version=version,
        kind="fine-tuned",
        uri=ModelRegistry.uri(model, version),
        alias=alias,
        metrics=finite,
        lineage=Lineage(
            parent_version=parent_version, data_window=data_window, n_samples=n_samples, code_version=code_version
        ),
    )


@lru_cache(maxsize=1)
def code_version() -> str:
    """The installed learnloop version, plus the git commit when running from a checkout (``0.1.0+g1a2b3c4``)."""
    try:
        version = importlib.metadata.version("learnloop")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}" if commit and "+" not in version else version


def pinned_requirements() -> list[str]:
    """``name==version`` of the serving model's imports, as installed here."""
    pins = []
    for name in SERVING_REQUIREMENTS:
        version = importlib.metadata.version(name)
        # A local build tag (torch's "+cpu") names a wheel index, not a version pip can find on PyPI.
        pins.append(f"{name}=={version.split('+')[0]}")
    return pins


def _read_labels(model_dir: Path) -> list[Any]:
    try:
        labels = json.loads((model_dir / "labels.json").read_text())["labels"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{model_dir}: needs labels.json with {{'labels': [...]}}: {error}") from None
    if not isinstance(labels, list) or not labels:
        raise ValueError(f"{model_dir}/labels.json: 'labels' must be a non-empty list")
    return labels


def _signature(labels: list[Any]) -> ModelSignature:
    """One required string column ``text`` in; ``label`` and ``probability`` out; ``batch_size``.

    The named column is the contract of ``mlflow models serve``: ``{"inputs": {"text": [...]}}``,
    ``{"instances": [{"text": ...}]}`` and ``dataframe_split``/``dataframe_records`` with a
    ``text`` column are served, a body with any other column is refused with MLflow's
    "Model is missing inputs ['text']" (extra columns beside ``text`` are ignored). A plain list
    of strings is not a column: pass ``{"text": [...]}`` (the subscriber SDK does that for a list).
    """
    import pandas as pd

    kinds = {type(label) for label in labels}
    example_labels = pd.Series(labels[:2], dtype=object if len(kinds) > 1 else None)
    output = pd.DataFrame({"label": example_labels, "probability": [0.5] * len(example_labels)})
    inferred = infer_signature(_input_example().head(len(output)), output, params={"batch_size": 32})
    return ModelSignature(inputs=inferred.inputs, outputs=inferred.outputs, params=inferred.params)


def _input_example() -> Any:
    import pandas as pd

    return pd.DataFrame({INPUT_COLUMN: ["an example text to classify", "another one"]})


def _folder_identity(model_dir: Path) -> dict[str, str]:
    """A stand-in base-model identity for a folder registered without one: its config's name and a hash."""
    from learners.finetune import FineTuneConfig, base_model_identity

    return base_model_identity(FineTuneConfig(base_model=str(model_dir)))


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:_MAX_PARAM]
    return out


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")
