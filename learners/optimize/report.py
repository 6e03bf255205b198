"""The report of an optimized model against its parent: same run, same held-out split, side by side.

Size on disk, parameters (all and non-zero), latency p50/p95 at batch 1 and batch 32, throughput,
accuracy/F1/log-loss and grade, for both models, and the deltas. Latency rounds alternate between
the two models, so a machine that gets busier half-way through slows both alike rather than
flattering whichever was timed first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learners.evaluation import EvalReport, evaluate, grade
from learners.finetune import Label
from learners.textclf import TextClassifier

__all__ = ["ModelFigures", "OptimizationReport", "compare", "folder_bytes", "parameter_counts"]

BATCH_SIZES = (1, 32)


def folder_bytes(folder: Path | str) -> int:
    """Bytes of every file under ``folder``: what a deployment downloads."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(all, non-zero)`` weights, counting int8 weights of quantized layers (which are not ``Parameter``s)."""
    tensors: list[torch.Tensor] = [p.detach() for p in model.parameters()]
    for module in model.modules():
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if callable(weight) and callable(bias):  # torch.ao quantized Linear: packed weights behind methods
            w = weight()
            tensors.append(w.int_repr() if w.is_quantized else w)
            b = bias()
            if b is not None:
                tensors.append(b)
    total = sum(t.numel() for t in tensors)
    nonzero = sum(int(torch.count_nonzero(t)) for t in tensors)
    return total, nonzero


@dataclass(frozen=True)
class ModelFigures:
    size_bytes: int
    params: int
    nonzero_params: int
    latency_ms: dict[int, tuple[float, float]]  # batch size -> (p50, p95)
    eval: EvalReport
    grade: str

    @property
    def throughput_per_s(self) -> float:
        """Texts per second at the largest batch size, from its median latency."""
        size = max(self.latency_ms)
        return size * 1000.0 / max(self.latency_ms[size][0], 1e-9)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "size_bytes": self.size_bytes, "params": self.params, "nonzero_params": self.nonzero_params,
            "throughput_per_s": round(self.throughput_per_s, 3), "grade": self.grade,
        }  # fmt: skip
        for size, (p50, p95) in sorted(self.latency_ms.items()):
            out[f"latency_b{size}_p50_ms"] = round(p50, 4)
            out[f"latency_b{size}_p95_ms"] = round(p95, 4)
        out.update({k: round(self.eval.metrics()[k], 6) for k in ("accuracy", "f1", "log_loss")})
        return out


@dataclass(frozen=True)
class OptimizationReport:
    method: str
    params: dict[str, Any]
    n_test: int
    parent: ModelFigures
    optimized: ModelFigures

    @property
    def delta(self) -> dict[str, float]:
        """Optimized minus parent for metrics (negative accuracy = loss); ratios for size and speed."""
        p, o = self.parent, self.optimized
        speed = {
            f"speedup_b{size}_p50": p.latency_ms[size][0] / max(o.latency_ms[size][0], 1e-9) for size in p.latency_ms
        }
        return {
            "accuracy": o.eval.accuracy - p.eval.accuracy,
            "f1": o.eval.f1 - p.eval.f1,
            "log_loss": o.eval.log_loss - p.eval.log_loss,
            "size_ratio": o.size_bytes / max(p.size_bytes, 1),
            "nonzero_params_ratio": o.nonzero_params / max(p.nonzero_params, 1),
            "throughput_ratio": o.throughput_per_s / max(p.throughput_per_s, 1e-9),
            **speed,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "params": self.params, "n_test": self.n_test,
            "parent": self.parent.to_dict(), "optimized": self.optimized.to_dict(),
            "delta": {k: round(v, 6) for k, v in self.delta.items()}, "grade": self.optimized.grade,
        }  # fmt: skip

    def metrics(self, prefix: str = "opt_") -> dict[str, float]:
        """Flat numbers for an MLflow run: the optimized model's figures, the parent's, and the deltas."""
        out: dict[str, float] = {}
        for side, figures in (("", self.optimized), ("parent_", self.parent)):
            for key, value in figures.to_dict().items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[f"{prefix}{side}{key}"] = float(value)
        out.update({f"{prefix}delta_{k}": float(v) for k, v in self.delta.items()})
        return out


def _timed(clf: TextClassifier, texts: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    clf.predict_proba(texts, batch_size=batch_size)
    return (time.perf_counter() - start) * 1000.0


def _latencies(
    models: Sequence[TextClassifier], texts: Sequence[str], rounds: int
) -> list[dict[int, tuple[float, float]]]:
    samples: list[dict[int, list[float]]] = [{size: [] for size in BATCH_SIZES} for _ in models]
    pool = list(texts)
    for size in BATCH_SIZES:
        batch = (pool * (size // len(pool) + 1))[:size]
        for clf in models:  # one warm-up call each: first calls pay for allocation and kernel choice
            _timed(clf, batch, size)
        for r in range(rounds):
            chunk = batch if size > 1 else [pool[r % len(pool)]]
            for i, clf in enumerate(models):
                samples[i][size].append(_timed(clf, chunk, size))
    return [
        {size: (float(np.percentile(v, 50)), float(np.percentile(v, 95))) for size, v in s.items()} for s in samples
    ]


def compare(
    parent: TextClassifier,
    parent_dir: Path | str,
    optimized: TextClassifier,
    optimized_dir: Path | str,
    texts: Sequence[str],
    labels: Sequence[Label],
    *,
    method: str,
    params: dict[str, Any] | None = None,
    rounds: int = 30,
) -> OptimizationReport:
    """Measure both models on the same held-out ``texts``/``labels`` in this one call."""
    latency = _latencies([parent, optimized], texts, rounds)
    figures = []
    for clf, folder, lat in ((parent, parent_dir, latency[0]), (optimized, optimized_dir, latency[1])):
        report = evaluate(clf, list(texts), list(labels), latency_samples=1)
        total, nonzero = parameter_counts(clf.model)
        figures.append(ModelFigures(folder_bytes(folder), total, nonzero, lat, report, grade(report)))
    return OptimizationReport(method, dict(params or {}), len(texts), figures[0], figures[1])
