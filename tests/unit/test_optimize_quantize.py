"""Quantizing only the tolerant layers of a fine-tuned MiniLM, and the report against its float parent (CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from learners.finetune import FineTuneConfig, TextData, fine_tune
from learners.optimize.quantize import candidate_layers, load, quantize, read_plan
from learners.optimize.report import OptimizationReport, compare, parameter_counts
from learners.textclf import TextClassifier, _quiet_quantization
from schemas.errors import ConfigError
from tests.unit.test_finetune import FAST, sentiment


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Parent:
    folder: Path
    classifier: TextClassifier
    val: tuple[list[str], list[bool]]
    test: tuple[list[str], list[bool]]
    calibration: list[str]


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Parent:
    texts, labels = sentiment(64, seed=1)
    val = sentiment(16, seed=2)
    folder = tmp_path_factory.mktemp("parent")
    fine_tune(TextData(texts, labels), TextData(*val), FineTuneConfig(epochs=2, learning_rate=5e-3, **FAST), folder)
    return Parent(folder, TextClassifier.load(folder, device="cpu"), val, sentiment(48, seed=3), texts[:32])


def test_dynamic_int8_quantizes_tolerant_layers_only_and_keeps_accuracy(parent: Parent, tmp_path: Path) -> None:
    plan = quantize(parent.folder, tmp_path, scheme="dynamic", texts=parent.val[0], labels=parent.val[1])
    candidates = candidate_layers(parent.classifier.model)
    assert len(candidates) == 36  # 6 layers x (query, key, value, attention output, intermediate, output)
    assert set(plan.sensitivity) == set(candidates) and all(v >= 0 for v in plan.sensitivity.values())
    assert plan.layers and sorted(plan.layers + plan.kept_float) == sorted(candidates)
    assert plan.achieved["kl"] <= 0.01 and plan.achieved["accuracy_drop"] <= 0.01
    assert read_plan(tmp_path) == {**plan.to_dict(), "torch": torch.__version__}

    int8 = load(tmp_path)
    assert int8.quantized and int8.labels == [False, True]
    modules = dict(int8.model.named_modules())
    assert all(type(modules[name]) is not nn.Linear for name in plan.layers)
    # The head and the embeddings stay float whatever the sensitivities say.
    assert type(modules["classifier"]) is nn.Linear and type(modules["bert.embeddings.word_embeddings"]) is nn.Embedding

    report = compare(parent.classifier, parent.folder, int8, tmp_path, *parent.test, method="quantize",
                     params={"scheme": "dynamic"}, rounds=3)  # fmt: skip
    assert report.delta["accuracy"] >= -0.02  # inside the <2-point bound
    assert report.optimized.size_bytes < report.parent.size_bytes
    assert report.parent.params == report.optimized.params  # int8 weights are still counted
    _check_report(report)


def test_a_tight_budget_keeps_every_layer_float(parent: Parent, tmp_path: Path) -> None:
    plan = quantize(parent.folder, tmp_path, texts=parent.val[0], max_kl=0.0)
    assert plan.layers == [] and len(plan.kept_float) == 36
    assert load(tmp_path).predict(parent.test[0][:4]) == parent.classifier.predict(parent.test[0][:4])


def test_static_int8_calibrates_and_reloads_the_same_predictions(parent: Parent, tmp_path: Path) -> None:
    layers = [name for name in candidate_layers(parent.classifier.model) if name.endswith("attention.self.query")]
    plan = quantize(parent.folder, tmp_path, scheme="static", layers=layers, calibration=parent.calibration)
    assert plan.layers == layers and plan.sensitivity == {}
    static = load(tmp_path)
    quantized = [name for name, m in static.model.named_modules() if type(m).__name__ == "Quantize"]
    assert len(quantized) == len(layers) == 6  # one activation quantizer in front of each chosen layer
    texts = parent.test[0]
    again = load(tmp_path).predict_proba(texts)
    assert again == static.predict_proba(texts)  # scales and zero points travel in the saved weights
    agree = sum(a == b for (a, _), (b, _) in zip(static.predict(texts), parent.classifier.predict(texts), strict=True))
    assert agree / len(texts) >= 0.95


def test_static_needs_calibration_and_layers_must_be_encoder_linears(parent: Parent, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibration"):
        quantize(parent.folder, tmp_path, scheme="static", texts=parent.val[0])
    with pytest.raises(ConfigError, match="classifier"):
        quantize(parent.folder, tmp_path, layers=["classifier"])
    with pytest.raises(ConfigError, match="not one of"):
        quantize(parent.folder, tmp_path, scheme="int4")


def test_bf16_copy_is_half_the_weights_and_loads_in_bf16(parent: Parent, tmp_path: Path) -> None:
    quantize(parent.folder, tmp_path, scheme="bf16")
    half = load(tmp_path, device="cpu")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    half_bytes = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    float_bytes = sum(p.stat().st_size for p in parent.folder.glob("*.safetensors"))
    assert 0 < half_bytes < 0.6 * float_bytes
    assert [y for y, _ in half.predict(parent.test[0])] == [y for y, _ in parent.classifier.predict(parent.test[0])]


def test_parameter_counts_see_zeros_and_quantized_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[0].zero_()
    assert parameter_counts(model) == (15 + 8, 23 - 4)
    with _quiet_quantization():
        int8 = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]
    assert parameter_counts(int8)[0] == 23 and parameter_counts(int8)[1] <= 19


def _check_report(report: OptimizationReport) -> None:
    data = report.to_dict()
    for side in ("parent", "optimized"):
        figures = data[side]
        for key in ("size_bytes", "params", "nonzero_params", "throughput_per_s", "latency_b1_p50_ms",
                    "latency_b1_p95_ms", "latency_b32_p50_ms", "latency_b32_p95_ms", "accuracy", "f1", "log_loss"):
            assert figures[key] > 0 or key == "log_loss", (side, key)
        assert figures["grade"] in "ABCDF"
    assert {"accuracy", "f1", "log_loss", "size_ratio", "speedup_b1_p50", "speedup_b32_p50"} <= data["delta"].keys()
    metrics = report.metrics("int8_")
    assert metrics["int8_size_bytes"] == report.optimized.size_bytes and "int8_parent_latency_b32_p95_ms" in metrics
    assert "int8_delta_accuracy" in metrics and all(isinstance(v, float) for v in metrics.values())
