"""Distilling a fine-tuned MiniLM into a 3-layer student on CPU, with soft labels for unlabelled texts."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig

from learners.optimize.distill import distill
from learners.optimize.report import compare
from learners.textclf import TextClassifier
from schemas.errors import ConfigError
from tests.unit import test_optimize_quantize
from tests.unit.test_finetune import sentiment
from tests.unit.test_optimize_quantize import Parent

parent = test_optimize_quantize.parent
one_torch_thread = test_optimize_quantize.one_torch_thread


def test_student_has_half_the_layers_and_learns_from_unlabelled_texts(parent: Parent, tmp_path: Path) -> None:
    texts, labels = sentiment(64, seed=1)
    some_labels = [y if i % 4 == 0 else None for i, y in enumerate(labels)]  # three in four unlabelled
    info = distill(parent.folder, tmp_path, texts, some_labels, temperature=2.0, alpha=0.7, steps=4)
    assert info["n_labelled"] == 16 and info["layers"] == [0, 2, 4]
    assert AutoConfig.from_pretrained(tmp_path).num_hidden_layers == 3
    student = TextClassifier.load(tmp_path, device="cpu")
    assert len(student.model.base_model.encoder.layer) == 3
    report = compare(parent.classifier, parent.folder, student, tmp_path, *parent.test, method="distill",
                     params=info, rounds=3)  # fmt: skip
    assert report.optimized.params < report.parent.params and report.optimized.size_bytes < report.parent.size_bytes


def test_bad_distillation_params_are_config_errors(parent: Parent, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        distill(parent.folder, tmp_path, ["a"], [None], temperature=0)
    with pytest.raises(ConfigError, match="layers must be"):
        distill(parent.folder, tmp_path, ["a"], [None], layers=[7])
