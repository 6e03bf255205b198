"""Pruning a fine-tuned MiniLM on CPU: magnitude sparsity is nominal, structured pruning really shrinks the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from learners.optimize.prune import prune
from learners.optimize.report import compare
from learners.textclf import TextClassifier
from schemas.errors import ConfigError
from tests.unit import test_optimize_quantize
from tests.unit.test_finetune import sentiment
from tests.unit.test_optimize_quantize import Parent

# The same tiny fine-tuned parent as the quantization tests, trained once per module.
parent = test_optimize_quantize.parent
one_torch_thread = test_optimize_quantize.one_torch_thread


def test_structured_pruning_shrinks_the_saved_model_and_recovers(parent: Parent, tmp_path: Path) -> None:
    texts, labels = sentiment(64, seed=1)
    info = prune(parent.folder, tmp_path, method="structured", sparsity=0.5, texts=texts, labels=labels,
                 recovery_steps=2)  # fmt: skip
    assert info["intermediate_size"] == 768
    assert AutoConfig.from_pretrained(tmp_path).intermediate_size == 768
    pruned = TextClassifier.load(tmp_path, device="cpu")
    report = compare(parent.classifier, parent.folder, pruned, tmp_path, *parent.test, method="prune",
                     params=info, rounds=3)  # fmt: skip
    assert report.optimized.size_bytes < 0.85 * report.parent.size_bytes
    assert report.optimized.params < report.parent.params


def test_magnitude_pruning_zeroes_weights_but_keeps_the_size(parent: Parent, tmp_path: Path) -> None:
    prune(parent.folder, tmp_path, method="magnitude", sparsity=0.4)
    pruned = TextClassifier.load(tmp_path, device="cpu")
    report = compare(parent.classifier, parent.folder, pruned, tmp_path, *parent.test, method="prune",
                     params={"sparsity": 0.4}, rounds=2)  # fmt: skip
    assert report.optimized.params == report.parent.params
    encoder = sum(m.weight.numel() for n, m in pruned.model.named_modules()
                  if isinstance(m, torch.nn.Linear) and ".encoder." in f".{n}")  # fmt: skip
    zeroed = report.parent.nonzero_params - report.optimized.nonzero_params
    assert abs(zeroed / encoder - 0.4) < 0.02  # nominal sparsity as asked
    assert abs(report.delta["size_ratio"] - 1) < 0.01  # dense storage: no smaller on disk


def test_bad_pruning_options_are_config_errors(parent: Parent, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not one of"):
        prune(parent.folder, tmp_path, method="random")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        prune(parent.folder, tmp_path, sparsity=1.5)
