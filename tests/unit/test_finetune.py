"""Fine-tuning MiniLM with LoRA on a tiny separable task, on CPU: training, saving, serving, int8.

One model is trained per module (``trained``) and shared by the tests that only read it; the
other runs are a few steps each. Everything stays small (max_length 32) so the file runs in
well under a minute on two cores.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from learners.evaluation import evaluate, quantization_effect
from learners.finetune import (
    FineTuneConfig,
    FineTuneResult,
    Label,
    TextData,
    TrainingCancelled,
    TrainingDataError,
    fine_tune,
    resolve_base_model,
)
from learners.textclf import (
    LabelMap,
    TextClassifier,
    pick_device,
    quantize_dynamic,
    weighted_cross_entropy,
)
from schemas.errors import ConfigError

POSITIVE = ["great", "excellent", "love", "wonderful", "fantastic", "amazing", "superb", "delightful"]
NEGATIVE = ["bad", "awful", "hate", "terrible", "horrible", "dreadful", "poor", "disappointing"]
NOUNS = ["movie", "service", "food", "product", "book", "hotel", "phone", "show"]
FAST: dict[str, Any] = {"max_length": 32, "batch_size": 16, "num_threads": 1, "warmup_ratio": 0.0, "max_seconds": None}


def sentiment(n: int, seed: int) -> tuple[list[str], list[bool]]:
    """Sentences built from two sentiment words; the label is True for the positive ones."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.random() < 0.5
        first, second = rng.sample(POSITIVE if label else NEGATIVE, 2)
        texts.append(f"the {rng.choice(NOUNS)} was {first} and {second}")
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # On a shared 2-core runner OpenMP threads spin against other processes: one thread is ~10x faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Trained:
    result: FineTuneResult
    events: list[dict[str, Any]]
    test: tuple[list[str], list[bool]]
    classifier: TextClassifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    texts, labels = sentiment(64, seed=1)
    # Every text twice, the copy mislabelled with weight 0: were weights ignored, nothing could be learnt.
    train = TextData(texts + texts, labels + [not y for y in labels], [1.0] * 64 + [0.0] * 64)
    val = TextData(*sentiment(32, seed=2))
    events: list[dict[str, Any]] = []
    config = FineTuneConfig(epochs=2, learning_rate=5e-3, **FAST)
    result = fine_tune(train, val, config, tmp_path_factory.mktemp("model"), progress=events.append)
    yield Trained(result, events, sentiment(64, seed=3), TextClassifier.load(result.model_dir))


def accuracy(classifier: TextClassifier, texts: list[str], labels: Sequence[Label]) -> float:
    predicted = classifier.predict(texts)
    return sum(p == y and type(p) is type(y) for (p, _), y in zip(predicted, labels, strict=True)) / len(labels)


def test_learns_the_task_and_beats_chance_on_held_out_data(trained: Trained) -> None:
    assert trained.result.best_val_accuracy >= 0.9
    assert accuracy(trained.classifier, *trained.test) >= 0.9
    assert trained.result.n_train == 128 and trained.result.n_val == 32
    assert trained.result.train_samples_per_s > 0 and trained.result.device == "cpu"
    assert trained.result.params["learning_rate"] == 5e-3 and trained.result.params["lora_r"] == 8


def test_predictions_use_the_original_bool_labels(trained: Trained) -> None:
    (label, p), (other, q) = trained.classifier.predict(["i love this wonderful hotel", "awful and terrible food"])
    assert (label, other) == (True, False) and p > 0.5 and q > 0.5
    proba = trained.classifier.predict_proba(["great book"])[0]
    assert set(proba) == {False, True} and math.isclose(sum(proba.values()), 1.0, rel_tol=1e-5)
    assert all(type(k) is bool for k in proba)


def test_saved_folder_is_a_plain_transformers_model_with_labels(trained: Trained) -> None:
    folder = trained.result.model_dir
    assert json.loads((folder / "labels.json").read_text()) == {"type": "bool", "labels": [False, True]}
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.id2label == {0: "False", 1: "True"}
    assert not any("lora" in name for name in model.state_dict())  # merged: no peft at serving time
    assert trained.classifier.max_length == 32  # the training max_length travels with the tokenizer


def test_progress_reports_train_and_eval_events(trained: Trained) -> None:
    stages = {e["stage"] for e in trained.events}
    assert stages == {"train", "eval"}
    keys = {"stage", "epoch", "step", "total_steps", "loss", "val_loss", "val_accuracy", "samples_per_s", "device"}
    assert all(keys <= e.keys() for e in trained.events)
    evals = [e for e in trained.events if e["stage"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]  # once per epoch by default
    assert all(e["val_loss"] is not None and e["loss"] is not None for e in evals)
    assert trained.result.history == trained.events


def test_concurrent_predictions_match_sequential_ones(trained: Trained) -> None:
    texts = trained.test[0]
    expected = trained.classifier.predict(texts, batch_size=8)
    chunks = [texts[i : i + 8] for i in range(0, len(texts), 8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda chunk: trained.classifier.predict(chunk, batch_size=8), chunks))
    got = [item for chunk in results for item in chunk]
    assert [label for label, _ in got] == [label for label, _ in expected]
    assert all(math.isclose(a, b, abs_tol=1e-5) for (_, a), (_, b) in zip(got, expected, strict=True))


def test_int8_copy_loads_and_stays_within_five_points(trained: Trained, tmp_path: Path) -> None:
    folder = quantize_dynamic(trained.result.model_dir, tmp_path / "int8")
    int8 = TextClassifier.load_quantized(folder)
    assert int8.quantized and int8.labels == [False, True]
    float_report = evaluate(trained.classifier, *trained.test, latency_samples=10)
    int8_report = evaluate(int8, *trained.test, latency_samples=10)
    assert abs(int8_report.accuracy - float_report.accuracy) <= 0.05
    effect = quantization_effect(float_report, int8_report)
    assert effect["speedup_p50"] > 0 and abs(effect["accuracy_change"]) <= 0.05


def test_string_labels_round_trip(tmp_path: Path) -> None:
    texts, labels = sentiment(32, seed=5)
    words = ["pos" if y else "neg" for y in labels]
    config = FineTuneConfig(max_steps=2, **FAST)
    result = fine_tune((texts, words, None), (texts[:8], words[:8], None), config, tmp_path)
    assert result.labels == ["neg", "pos"] and result.steps == 2
    classifier = TextClassifier.load(tmp_path)
    assert {label for label, _ in classifier.predict(texts[:4])} <= {"neg", "pos"}
    assert LabelMap.load(tmp_path) == LabelMap(("neg", "pos"))


def test_early_stopping_restores_the_best_weights(tmp_path: Path) -> None:
    texts, labels = sentiment(32, seed=6)
    val = TextData(*sentiment(16, seed=7))
    # A learning rate of 1.0 wrecks the model after a step or two: val loss must rise.
    config = FineTuneConfig(**{**FAST, "batch_size": 8}, learning_rate=1.0, epochs=5, eval_every_steps=1, patience=0)
    result = fine_tune(TextData(texts, labels), val, config, tmp_path)
    evals = [e for e in result.history if e["stage"] == "eval"]
    assert result.steps < 20 and len(evals) >= 2
    assert evals[-1]["val_loss"] > result.best_val_loss == min(e["val_loss"] for e in evals)
    # The saved (merged) model is the best one, not the last one.
    restored = evaluate(TextClassifier.load(tmp_path), list(val.texts), list(val.labels))
    assert math.isclose(restored.log_loss, result.best_val_loss, rel_tol=1e-3, abs_tol=1e-4)


def test_should_stop_cancels_without_writing(tmp_path: Path) -> None:
    texts, labels = sentiment(16, seed=8)
    calls = 0

    def stop_on_second_batch() -> bool:
        nonlocal calls
        calls += 1
        return calls > 1

    out = tmp_path / "never"
    with pytest.raises(TrainingCancelled, match="cancelled at step 1/"):
        fine_tune((texts, labels, None), (texts, labels, None), FineTuneConfig(**{**FAST, "batch_size": 8}), out,
                  should_stop=stop_on_second_batch)  # fmt: skip
    assert not out.exists()


def test_optuna_search_picks_params_then_trains(tmp_path: Path) -> None:
    texts, labels = sentiment(8, seed=9)
    config = FineTuneConfig(**{**FAST, "batch_size": 8}, max_steps=1, trials=2)
    events: list[dict[str, Any]] = []
    result = fine_tune((texts, labels, None), (texts, labels, None), config, tmp_path, progress=events.append)
    search = result.params["search"]
    assert len(search["trials"]) == 2 and set(search["best_params"]) == {"learning_rate", "lora_r", "lora_dropout"}
    assert result.params["learning_rate"] == search["best_params"]["learning_rate"]
    assert {e.get("trial") for e in events} == {0, 1, None}


def test_zero_weights_are_ignored_and_weights_change_the_loss() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 3.0]])
    targets = torch.tensor([0, 1, 0])
    kept = weighted_cross_entropy(logits[:2], targets[:2])
    assert torch.isclose(weighted_cross_entropy(logits, targets, torch.tensor([1.0, 1.0, 0.0])), kept)
    assert not torch.isclose(weighted_cross_entropy(logits, targets, torch.tensor([1.0, 3.0, 1.0])),
                             weighted_cross_entropy(logits, targets))  # fmt: skip
    assert weighted_cross_entropy(logits, targets, torch.zeros(3)).item() == 0.0


def test_pick_device_falls_back_to_cpu() -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is present")
    assert pick_device("auto").type == "cpu" and pick_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="cuda was asked for"):
        pick_device("cuda")


def test_missing_base_model_is_one_config_error_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_base_model(FineTuneConfig(base_model=str(tmp_path / "nope")))
    assert "training.base_model" in str(info.value) and "\n" not in str(info.value)
    assert (resolve_base_model(FineTuneConfig()) / "config.json").is_file()


@pytest.mark.parametrize(
    ("labels", "match"),
    [([True, True], "one class"), ([True, 1], "mix types"), ([1.5, 2.5], "bool, int or str")],
)
def test_unusable_data_is_refused_before_training(labels: list[Any], match: str, tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match=match):
        fine_tune((["a", "b"], labels, None), (["a"], labels[:1], None), FineTuneConfig(), tmp_path)


def test_label_map_keeps_int_labels_and_their_type(tmp_path: Path) -> None:
    label_map = LabelMap.from_labels([10, 2, 2, 7])
    assert label_map.values == (10, 2, 7)  # sorted by str: stable, whatever the type
    label_map.save(tmp_path)
    assert LabelMap.load(tmp_path) == label_map and label_map.id_of(7) == 2
    with pytest.raises(TrainingDataError, match="unknown label True"):
        LabelMap.from_labels([0, 1]).id_of(True)  # True == 1, but it is not an int label
