"""Quantization that keeps accuracy: only the linear layers that tolerate int8 are quantized.

Quantizing every ``nn.Linear`` of MiniLM (the old ``quantize_dynamic``) cost 5-7 accuracy points.
The loss is not spread evenly: a few layers carry most of it. So each candidate layer (the
encoder's linear layers; the embeddings, pooler and classifier head always stay float) is
quantized *alone* and its sensitivity measured as the mean KL divergence of the predicted
class distribution from the float model's, on sample texts (no labels needed). Layers are then
added from the least to the most sensitive while the combined model stays within budget: mean
KL <= ``max_kl`` and, where labels are given, accuracy no more than ``max_accuracy_drop`` below
float. What was quantized, what was kept float, and every layer's sensitivity are written to
``quantization.json`` beside the weights, so the choice can be read and argued with.

Schemes: ``dynamic`` (int8 weights, activations quantized on the fly; CPU), ``static`` (int8
weights and activations, ranges calibrated on sample texts with ``torch.ao`` observers; CPU),
``fp16``/``bf16`` (the whole model in half precision; meant for GPUs).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from learners.finetune import Label
from learners.textclf import (
    LABELS_FILE,
    QUANTIZED_WEIGHTS,
    LabelMap,
    TextClassifier,
    _max_length,
    _quiet_quantization,
    load_tokenizer,
    pick_device,
    quiet_transformers,
)
from schemas.errors import ConfigError

__all__ = ["INFO_FILE", "SCHEMES", "QuantizePlan", "candidate_layers", "load", "quantize", "read_plan"]

Scheme = Literal["dynamic", "static", "fp16", "bf16"]
SCHEMES: tuple[str, ...] = ("dynamic", "static", "fp16", "bf16")
INFO_FILE = "quantization.json"
_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class QuantizePlan:
    """Which layers a quantized copy holds in int8, and the measurements behind the choice."""

    scheme: str
    layers: list[str]
    kept_float: list[str]
    sensitivity: dict[str, float] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)
    achieved: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme, "layers": self.layers, "kept_float": self.kept_float,
            "sensitivity": self.sensitivity, "budget": self.budget, "achieved": self.achieved,
            "torch": torch.__version__,
        }  # fmt: skip


def candidate_layers(model: nn.Module) -> list[str]:
    """The encoder's linear layers: the only ones ever quantized (embeddings, pooler and head stay float)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".encoder." in f".{name}"]


class _StaticLinear(nn.Module):
    """A linear layer between a quantize and a dequantize stub: eager-mode static int8 for one layer."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.linear = linear
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dequant(self.linear(self.quant(x)))
        return out


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _dynamic(model: nn.Module, layers: Sequence[str]) -> nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig
    from torch.ao.quantization import quantize_dynamic as ao_quantize_dynamic

    spec = {name: default_dynamic_qconfig for name in layers}
    with _quiet_quantization():
        out: nn.Module = ao_quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)  # type: ignore[no-untyped-call]
    return out


def _static(model: nn.Module, layers: Sequence[str], calibration: list[dict[str, torch.Tensor]]) -> nn.Module:
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    out = copy.deepcopy(model)
    with _quiet_quantization(), warnings.catch_warnings():
        # Rebuilding a saved model runs no calibration: its observers report default ranges, then the
        # saved scales and zero points are loaded over them. torch's default qconfig still passes
        # reduce_range, which its observers now mark deprecated.
        warnings.filterwarnings("ignore", "must run observer before calling calculate_qparams")
        warnings.filterwarnings("ignore", "Please use quant_min and quant_max", UserWarning)
        qconfig = get_default_qconfig(torch.backends.quantized.engine)  # type: ignore[no-untyped-call]
        for name in layers:
            wrapper = _StaticLinear(out.get_submodule(name))
            wrapper.qconfig = qconfig
            _set_module(out, name, wrapper)
        prepare(out, inplace=True)  # type: ignore[no-untyped-call]
        with torch.inference_mode():
            for batch in calibration:
                out(**batch)
        convert(out, inplace=True)  # type: ignore[no-untyped-call]
    return out.eval()


def _apply(
    model: nn.Module, scheme: str, layers: Sequence[str], calibration: list[dict[str, torch.Tensor]]
) -> nn.Module:
    return _static(model, layers, calibration) if scheme == "static" else _dynamic(model, layers)


def _batches(clf: TextClassifier, texts: Sequence[str], batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    out = []
    for start in range(0, len(texts), batch_size):
        enc = clf.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                            max_length=clf.max_length, return_tensors="pt")  # fmt: skip
        out.append(dict(enc))
    return out


def _log_probs(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([F.log_softmax(model(**b).logits.float(), dim=-1) for b in batches])


def _kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float(F.kl_div(other, reference, log_target=True, reduction="batchmean"))


def _accuracy(log_probs: torch.Tensor, targets: torch.Tensor | None) -> float:
    return float((log_probs.argmax(-1) == targets).float().mean()) if targets is not None else math.nan


def quantize(
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    scheme: str = "dynamic",
    texts: Sequence[str] = (),
    labels: Sequence[Label] | None = None,
    calibration: Sequence[str] = (),
    layers: Sequence[str] | None = None,
    max_kl: float = 0.01,
    max_accuracy_drop: float = 0.01,
) -> QuantizePlan:
    """Write a quantized copy of a fine-tuned model folder to ``out_dir``; returns the plan it followed.

    ``texts`` (with ``labels`` where known) are what sensitivity is measured on: use the validation
    split, never the test split the report is scored on. ``calibration`` texts set the activation
    ranges of ``static``. ``layers`` skips the search and quantizes exactly those. Load the
    result with ``load``.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"quantization scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    src, out = Path(model_dir), Path(out_dir)
    parent = TextClassifier.load(src, device="cpu")
    if scheme in _HALF:
        plan = QuantizePlan(scheme, [], [], budget={})
        out.mkdir(parents=True, exist_ok=True)
        half: Any = parent.model.to(_HALF[scheme])
        half.save_pretrained(out)
        parent.tokenizer.save_pretrained(out)
        return _finish(src, out, plan)
    if scheme == "static" and not calibration:
        raise ConfigError("static quantization needs calibration texts (activation ranges come from them)")
    model = parent.model.eval()
    candidates = candidate_layers(model)
    unknown = sorted(set(layers or ()) - set(candidates))
    if unknown:
        raise ConfigError(f"not quantizable layers (only the encoder's linear layers are): {', '.join(unknown)}")
    calib = _batches(parent, list(calibration)[:256]) if scheme == "static" else []
    if layers is not None:
        plan = QuantizePlan(scheme, list(layers), [n for n in candidates if n not in layers])
    else:
        if not texts:
            raise ConfigError("choosing layers needs sample texts to measure sensitivity on (or pass layers=)")
        plan = _search(parent, model, scheme, texts, labels, calib, candidates, max_kl, max_accuracy_drop)
    quantized = _apply(model, scheme, plan.layers, calib)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_quantization():
        torch.save(quantized.state_dict(), out / QUANTIZED_WEIGHTS)
    config: Any = model.config
    config.save_pretrained(out)
    parent.tokenizer.save_pretrained(out)
    return _finish(src, out, plan)


def _search(
    parent: TextClassifier, model: nn.Module, scheme: str, texts: Sequence[str], labels: Sequence[Label] | None,
    calib: list[dict[str, torch.Tensor]], candidates: list[str], max_kl: float, max_drop: float,
) -> QuantizePlan:  # fmt: skip
    batches = _batches(parent, list(texts))
    targets = torch.tensor([parent.label_map.id_of(y) for y in labels]) if labels is not None else None
    reference = _log_probs(model, batches)
    float_accuracy = _accuracy(reference, targets)
    sensitivity = {
        name: round(_kl(reference, _log_probs(_apply(model, scheme, [name], calib), batches)), 8)
        for name in candidates
    }
    # Adding layers in order of sensitivity, the loss grows (near enough) monotonically: the longest
    # prefix within budget is found by bisection, a handful of evaluations instead of one per layer.
    ranked = [name for name in sorted(candidates, key=sensitivity.__getitem__) if sensitivity[name] <= max_kl]
    achieved = {"kl": 0.0, "accuracy_drop": 0.0}

    def within(k: int) -> dict[str, float] | None:
        trial = _log_probs(_apply(model, scheme, ranked[:k], calib), batches)
        kl, drop = _kl(reference, trial), float_accuracy - _accuracy(trial, targets)
        if kl > max_kl or drop > max_drop:  # NaN drop (no labels) passes
            return None
        return {"kl": round(kl, 8), "accuracy_drop": 0.0 if math.isnan(drop) else round(drop, 6)}

    lo, hi = 0, len(ranked)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        figures = within(mid)
        if figures is None:
            hi = mid - 1
        else:
            lo, achieved = mid, figures
    chosen = ranked[:lo]
    order = {name: i for i, name in enumerate(candidates)}
    chosen.sort(key=order.__getitem__)
    return QuantizePlan(
        scheme, chosen, [n for n in candidates if n not in chosen], sensitivity,
        budget={"max_kl": max_kl, "max_accuracy_drop": max_drop, "n_texts": float(len(texts))}, achieved=achieved,
    )  # fmt: skip


def _finish(src: Path, out: Path, plan: QuantizePlan) -> QuantizePlan:
    shutil.copyfile(src / LABELS_FILE, out / LABELS_FILE)
    (out / INFO_FILE).write_text(json.dumps(plan.to_dict(), indent=2) + "\n", encoding="utf-8")
    return plan


def read_plan(folder: Path | str) -> dict[str, Any] | None:
    """The ``quantization.json`` of a folder, or None for a float model."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        return None
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return info


def load(model_dir: Path | str, device: str = "auto", max_length: int | None = None) -> TextClassifier:
    """Load any model folder: float, a ``quantize`` copy of any scheme, or an old all-layers int8 copy."""
    folder = Path(model_dir)
    info = read_plan(folder)
    if info is None:
        return TextClassifier.load(folder, device=device, max_length=max_length)
    scheme = info.get("scheme")
    if scheme in _HALF:
        dev = pick_device(device)
        tokenizer = load_tokenizer(folder)
        with quiet_transformers():
            half = AutoModelForSequenceClassification.from_pretrained(
                folder, local_files_only=True, dtype=_HALF[scheme]
            )
        return TextClassifier(model=half.to(dev), tokenizer=tokenizer, label_map=LabelMap.load(folder), device=dev,
                              max_length=_max_length(tokenizer, half, max_length))  # fmt: skip
    if scheme not in ("dynamic", "static"):  # "dynamic-int8": every linear layer, written by textclf
        return TextClassifier.load_quantized(folder, max_length=max_length)
    tokenizer = load_tokenizer(folder)
    with quiet_transformers():
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        float_model = AutoModelForSequenceClassification.from_config(config).eval()  # type: ignore[no-untyped-call]
    model = _apply(float_model, scheme, list(info["layers"]), [])
    with _quiet_quantization():
        model.load_state_dict(torch.load(folder / QUANTIZED_WEIGHTS, map_location="cpu", weights_only=True))
    return TextClassifier(
        model=model, tokenizer=tokenizer, label_map=LabelMap.load(folder), device=torch.device("cpu"),
        max_length=_max_length(tokenizer, float_model, max_length), quantized=True,
    )  # fmt: skip
