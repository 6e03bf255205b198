"""Knowledge distillation: a shallower student of the same family, trained on the teacher's soft labels.

The student is the teacher with every other encoder layer (3 of MiniLM's 6 by default), its
weights copied from the teacher's, so training starts close to the teacher rather than from
scratch. The loss is ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(label)``
on labelled texts and the KL term alone on unlabelled ones: stored texts far outnumber labels.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from learners.finetune import Label
from learners.textclf import LABELS_FILE, TextClassifier
from schemas.errors import ConfigError

__all__ = ["DISTILL_FILE", "distill", "student_of"]

DISTILL_FILE = "distillation.json"


def student_of(teacher: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A copy of ``teacher`` keeping only the encoder ``layers`` (indices into the teacher's)."""
    student: Any = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    encoder.layer = nn.ModuleList([encoder.layer[i] for i in layers])
    student.config.num_hidden_layers = len(layers)
    return student  # type: ignore[no-any-return]


def distill(
    teacher_dir: Path | str,
    out_dir: Path | str,
    texts: Sequence[str],
    labels: Sequence[Label | None],
    *,
    layers: Sequence[int] = (0, 2, 4),
    temperature: float = 2.0,
    alpha: float = 0.7,
    steps: int = 100,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a student on ``texts``; ``labels`` holds None for the texts nobody labelled."""
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ConfigError(f"distillation needs temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")
    if len(texts) != len(labels) or not texts:
        raise ConfigError(f"distillation needs texts and as many labels (None when unlabelled): {len(texts)}, "
                          f"{len(labels)}")  # fmt: skip
    teacher = TextClassifier.load(teacher_dir, device="cpu")
    depth = int(teacher.model.config.num_hidden_layers)  # type: ignore[union-attr,arg-type]
    if not layers or any(not 0 <= i < depth for i in layers):
        raise ConfigError(f"student layers must be indices of the teacher's {depth} layers, got {list(layers)}")
    student: Any = student_of(teacher.model, layers).train()
    targets = torch.tensor([teacher.label_map.id_of(y) if y is not None else -100 for y in labels])
    optimizer = torch.optim.AdamW(student.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randperm(len(texts), generator=generator)[:batch_size]
        enc = teacher.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                max_length=teacher.max_length, return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            soft = F.log_softmax(teacher.model(**enc).logits / temperature, dim=-1)
        logits = student(**enc).logits
        kd = F.kl_div(F.log_softmax(logits / temperature, dim=-1), soft, log_target=True, reduction="batchmean")
        y = targets[rows]
        labelled = y != -100
        ce = F.cross_entropy(logits[labelled], y[labelled]) if bool(labelled.any()) else logits.sum() * 0
        loss = alpha * temperature**2 * kd + (1 - alpha) * ce
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    student.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    teacher.tokenizer.save_pretrained(out)
    shutil.copyfile(Path(teacher_dir) / LABELS_FILE, out / LABELS_FILE)
    info = {"layers": list(layers), "temperature": temperature, "alpha": alpha, "steps": steps,
            "n_texts": len(texts), "n_labelled": sum(y is not None for y in labels)}  # fmt: skip
    (out / DISTILL_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
