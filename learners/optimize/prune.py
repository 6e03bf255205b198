"""Pruning a fine-tuned classifier: unstructured magnitude pruning, and structured FFN-neuron pruning.

Unstructured pruning zeroes the smallest weights of the encoder's linear layers (one global
threshold). The saved model is as large and as slow as before: dense kernels multiply zeros
too. Its report shows the nominal sparsity (non-zero parameters) apart from size and latency.

Structured pruning removes whole FFN neurons: the rows of each layer's ``intermediate.dense``
and the matching columns of ``output.dense`` with the smallest L2 norm, the same number in
every layer, so the config's ``intermediate_size`` shrinks and the saved model really is
smaller and faster. (Attention heads are not removed: BERT derives the head width from
``hidden_size / num_attention_heads``, so dropping heads uniformly would change that width.)

Either may be followed by a short recovery fine-tune of all weights, pruned ones held at zero.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from learners.finetune import Label
from learners.optimize.quantize import candidate_layers
from learners.textclf import LABELS_FILE, TextClassifier
from schemas.errors import ConfigError

__all__ = ["PRUNE_FILE", "prune"]

PRUNE_FILE = "pruning.json"


def _magnitude(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    layers = {name: cast(nn.Linear, model.get_submodule(name)) for name in candidate_layers(model)}
    weights = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
    threshold = torch.quantile(weights.float()[torch.randperm(len(weights))[:1_000_000]], sparsity)
    masks = {}
    with torch.no_grad():
        for name, m in layers.items():
            mask = (m.weight.abs() > threshold).to(m.weight.dtype)
            m.weight.mul_(mask)
            masks[name] = mask
    return masks


def _ffn_neurons(model: nn.Module, fraction: float) -> int:
    config: Any = getattr(model, "config", None)
    size = int(config.intermediate_size)
    keep = max(1, round(size * (1 - fraction)))
    for name, module in model.named_modules():
        if not name.endswith(".intermediate"):
            continue
        up = cast(nn.Linear, module.dense)
        down = cast(nn.Linear, model.get_submodule(name.rsplit(".", 1)[0] + ".output.dense"))
        # A neuron's importance: the norm of its incoming and outgoing weights together.
        score = up.weight.detach().norm(dim=1) * down.weight.detach().norm(dim=0)
        kept = torch.sort(torch.topk(score, keep).indices).values
        new_up, new_down = nn.Linear(up.in_features, keep), nn.Linear(keep, down.out_features)
        with torch.no_grad():
            new_up.weight.copy_(up.weight[kept])
            new_up.bias.copy_(up.bias[kept])
            new_down.weight.copy_(down.weight[:, kept])
            new_down.bias.copy_(down.bias)
        module.dense = new_up
        model.get_submodule(name.rsplit(".", 1)[0] + ".output").dense = new_down
    config.intermediate_size = keep
    return keep


def _recover(
    clf: TextClassifier, texts: Sequence[str], labels: Sequence[Label], steps: int, lr: float,
    masks: dict[str, torch.Tensor],
) -> None:  # fmt: skip
    model = clf.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    targets = torch.tensor([clf.label_map.id_of(y) for y in labels])
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = torch.randperm(len(texts), generator=generator)[:16]
        enc = clf.tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=clf.max_length,
                            return_tensors="pt")  # fmt: skip
        loss = nn.functional.cross_entropy(model(**enc).logits, targets[rows])
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        with torch.no_grad():  # pruned weights stay pruned
            for name, mask in masks.items():
                cast(nn.Linear, model.get_submodule(name)).weight.mul_(mask)
    model.eval()


def prune(
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    method: str = "structured",
    sparsity: float = 0.3,
    texts: Sequence[str] = (),
    labels: Sequence[Label] = (),
    recovery_steps: int = 0,
    learning_rate: float = 5e-5,
) -> dict[str, Any]:
    """Write a pruned copy to ``out_dir`` (a plain model folder: ``TextClassifier.load`` reads it)."""
    if method not in ("magnitude", "structured"):
        raise ConfigError(f"pruning method {method!r} is not one of magnitude, structured")
    if not 0 < sparsity < 1:
        raise ConfigError(f"pruning sparsity must be between 0 and 1, got {sparsity}")
    if recovery_steps and not texts:
        raise ConfigError("a recovery fine-tune needs labelled texts")
    src, out = Path(model_dir), Path(out_dir)
    clf = TextClassifier.load(src, device="cpu")
    masks: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {"method": method, "sparsity": sparsity, "recovery_steps": recovery_steps}
    if method == "magnitude":
        masks = _magnitude(clf.model, sparsity)
    else:
        info["intermediate_size"] = _ffn_neurons(clf.model, sparsity)
    if recovery_steps:
        _recover(clf, texts, labels, recovery_steps, learning_rate, masks)
    out.mkdir(parents=True, exist_ok=True)
    model: Any = clf.model
    model.save_pretrained(out)
    clf.tokenizer.save_pretrained(out)
    shutil.copyfile(src / LABELS_FILE, out / LABELS_FILE)
    (out / PRUNE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
