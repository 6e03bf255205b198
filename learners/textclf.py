"""Serving a fine-tuned text classifier: label mapping, device choice, batched prediction, int8.

A model folder written by ``learners.finetune.fine_tune`` is a plain transformers model plus
``labels.json``, which keeps the original label values and their type (bool, int or str), so
predictions come back as the labels the application sent, not as ``"LABEL_1"``.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from learners.finetune import Label, TextData, TrainingDataError
from schemas.errors import ConfigError

__all__ = [
    "LABELS_FILE",
    "QUANTIZED_WEIGHTS",
    "Batch",
    "EncodedTexts",
    "LabelMap",
    "TextClassifier",
    "batch_loader",
    "encode_texts",
    "load_tokenizer",
    "loss_and_accuracy",
    "pick_device",
    "quantize_dynamic",
    "quiet_transformers",
    "weighted_cross_entropy",
]

LABELS_FILE = "labels.json"
QUANTIZED_WEIGHTS = "quantized_int8.pt"
_QUANTIZED_INFO = "quantization.json"
_LABEL_TYPES: dict[str, type] = {"bool": bool, "int": int, "str": str}


@dataclass(frozen=True)
class LabelMap:
    """Class ids <-> original label values; ids follow the labels sorted by ``str``.

    The values keep their Python type through ``labels.json`` (JSON has bool, int and str).

    >>> m = LabelMap.from_labels([True, False, True])
    >>> m.values, m.id2label, m.id_of(True)
    ((False, True), {0: 'False', 1: 'True'}, 1)
    >>> LabelMap.from_json(m.to_json()) == m
    True
    """

    values: tuple[Label, ...]

    @classmethod
    def from_labels(cls, labels: Iterable[Label]) -> LabelMap:
        labels = list(labels)
        kinds = {type(v).__name__ for v in labels}
        if not kinds <= _LABEL_TYPES.keys():
            raise TrainingDataError(f"labels must be bool, int or str, got {sorted(kinds)}")
        if len(kinds) > 1:
            # True == 1 in Python: mixing types would silently merge classes.
            raise TrainingDataError(f"labels mix types {sorted(kinds)}; use one of bool, int or str")
        return cls(tuple(sorted(set(labels), key=str)))

    @classmethod
    def for_training(cls, train: TextData, val: TextData) -> LabelMap:
        """The label map of a train/validation pair, after checking that they can train a classifier."""
        for name, data in (("train", train), ("val", val)):
            if not data.texts:
                raise TrainingDataError(f"{name} split is empty")
            if len(data.labels) != len(data.texts):
                raise TrainingDataError(f"{name}: {len(data.texts)} texts but {len(data.labels)} labels")
            weights = data.weights
            if weights is not None and len(weights) != len(data.texts):
                raise TrainingDataError(f"{name}: {len(data.texts)} texts but {len(weights)} weights")
            if weights is not None and any(not math.isfinite(w) or w < 0 for w in weights):
                raise TrainingDataError(f"{name}: weights must be finite and >= 0")
        label_map = cls.from_labels([*train.labels, *val.labels])
        if len(set(train.labels)) < 2:
            raise TrainingDataError(f"the train split has one class ({train.labels[0]!r}); a classifier needs two")
        return label_map

    @property
    def kind(self) -> str:
        return type(self.values[0]).__name__ if self.values else "str"

    @property
    def id2label(self) -> dict[int, str]:
        return {i: str(v) for i, v in enumerate(self.values)}

    @property
    def label2id(self) -> dict[str, int]:
        return {str(v): i for i, v in enumerate(self.values)}

    def id_of(self, label: Label) -> int:
        if type(label).__name__ != self.kind or label not in self.values:
            raise TrainingDataError(f"unknown label {label!r}; known: {list(self.values)}")
        return self.values.index(label)

    def to_json(self) -> str:
        return json.dumps({"type": self.kind, "labels": list(self.values)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabelMap:
        data = json.loads(text)
        kind = _LABEL_TYPES.get(data.get("type", "")) if isinstance(data, dict) else None
        values = data.get("labels") if isinstance(data, dict) else None
        if kind is None or not isinstance(values, list) or any(type(v) is not kind for v in values):
            raise ConfigError(f"{LABELS_FILE}: expected {{'type': 'bool'|'int'|'str', 'labels': [...]}}")
        return cls(tuple(values))

    def save(self, folder: Path) -> Path:
        path = folder / LABELS_FILE
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: Path) -> LabelMap:
        path = folder / LABELS_FILE
        if not path.is_file():
            raise ConfigError(f"{path} is missing: not a model folder written by learners.finetune")
        return cls.from_json(path.read_text(encoding="utf-8"))


def pick_device(pref: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU; an explicit choice that is not available is a ``ConfigError``.

    >>> pick_device("cpu").type
    'cpu'
    """
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if pref == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if pref not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"training.device: {pref!r} is not one of auto, cpu, cuda, mps")
    if (pref == "cuda" and not cuda) or (pref == "mps" and not mps):
        raise ConfigError(f"training.device: {pref} was asked for but is not available here")
    return torch.device(pref)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars while loading a model.

    Starting a classifier from an encoder always reports the new head as MISSING; that is by
    design, so it is noise in a worker log. Both settings are process-wide in transformers:
    they are put back as they were on exit.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _quiet_quantization() -> Iterator[None]:
    # torch marks eager-mode quantization deprecated (in favour of torchao, not a dependency here)
    # yet it is the only int8 path in torch itself; these three warnings are that notice.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", r"torch\.quantize_per_tensor.*deprecated", UserWarning)
        warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning)
        yield


def _int8(model: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import quantize_dynamic as ao_quantize_dynamic

    with _quiet_quantization():
        quantized: torch.nn.Module = ao_quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]
    return quantized


@dataclass(eq=False, kw_only=True)
class TextClassifier:
    """A fine-tuned classifier in eval mode; ``predict``/``predict_proba`` are safe to call from many threads.

    Probabilities are keyed by the original label values::

        clf = TextClassifier.load(result.model_dir)
        clf.predict(["love it"])           # [(True, 0.97)]
        clf.predict_proba(["love it"])     # [{False: 0.03, True: 0.97}]
    """

    model: torch.nn.Module = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    label_map: LabelMap
    device: torch.device
    max_length: int
    quantized: bool = False
    # A fast tokenizer's Rust object is not safe to share between threads when it sets its
    # truncation/padding state per call ("Already borrowed"); tokenising is cheap next to the model.
    _tokenizer_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()

    @property
    def labels(self) -> list[Label]:
        return list(self.label_map.values)

    @classmethod
    def load(cls, model_dir: Path | str, device: str = "auto", max_length: int | None = None) -> TextClassifier:
        """Load a folder written by ``fine_tune`` (plain transformers; no peft needed)."""
        folder = Path(model_dir)
        label_map = LabelMap.load(folder)
        dev = pick_device(device)
        tokenizer = load_tokenizer(folder)
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        model.to(dev)
        return cls(
            model=model, tokenizer=tokenizer, label_map=label_map, device=dev,
            max_length=_max_length(tokenizer, model, max_length),
        )  # fmt: skip

    @classmethod
    def load_quantized(cls, model_dir: Path | str, max_length: int | None = None) -> TextClassifier:
        """Load a folder written by ``quantize_dynamic`` (CPU only: dynamic int8 kernels are CPU kernels)."""
        folder = Path(model_dir)
        weights = folder / QUANTIZED_WEIGHTS
        if not weights.is_file():
            raise ConfigError(f"{weights} is missing: not a folder written by quantize_dynamic")
        label_map = LabelMap.load(folder)
        tokenizer = load_tokenizer(folder)
        with quiet_transformers():
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            float_model = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
        model = _int8(float_model.eval())
        with _quiet_quantization():
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return cls(
            model=model, tokenizer=tokenizer, label_map=label_map, device=torch.device("cpu"),
            max_length=_max_length(tokenizer, float_model, max_length), quantized=True,
        )  # fmt: skip

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[Label, float]]:
        """One ``{label: probability}`` per text."""
        out: list[dict[Label, float]] = []
        values = self.label_map.values
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            with self._tokenizer_lock:
                enc = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
            inputs = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                logits = self.model(**inputs).logits
                probs: list[list[float]] = torch.softmax(logits.float(), dim=-1).cpu().tolist()
            out.extend({values[i]: p for i, p in enumerate(row)} for row in probs)
        return out

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[tuple[Label, float]]:
        """The most likely label of each text and its probability."""
        return [max(p.items(), key=lambda kv: kv[1]) for p in self.predict_proba(texts, batch_size)]

    def __call__(self, texts: list[str]) -> list[dict[Label, float]]:
        """``predict_proba``, so a classifier is the predictor ``learners.evaluation.evaluate`` takes."""
        return self.predict_proba(texts)


def quantize_dynamic(model_dir: Path | str, out_dir: Path | str) -> Path:
    """Write an int8 copy of a fine-tuned model (dynamic quantization of every ``nn.Linear``, CPU).

    The folder holds the quantized state dict, the model config, the tokenizer and
    ``labels.json``; load it with ``TextClassifier.load_quantized``.
    """
    src, out = Path(model_dir), Path(out_dir)
    LabelMap.load(src)  # refuse folders we did not write before doing any work
    tokenizer = load_tokenizer(src)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(src, local_files_only=True)
    quantized = _int8(model.to("cpu").eval())
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_quantization():
        torch.save(quantized.state_dict(), out / QUANTIZED_WEIGHTS)
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copyfile(src / LABELS_FILE, out / LABELS_FILE)
    info: dict[str, Any] = {"scheme": "dynamic-int8", "modules": ["torch.nn.Linear"], "torch": torch.__version__}
    (out / _QUANTIZED_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EncodedTexts:
    """Training/validation data as token ids (unpadded: batches pad to their longest text), class ids, weights."""

    ids: list[list[int]]
    labels: list[int]
    weights: list[float]


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, data: TextData, label_map: LabelMap, max_length: int
) -> EncodedTexts:
    ids: list[list[int]] = tokenizer(list(data.texts), truncation=True, max_length=max_length)["input_ids"]
    weights = [float(w) for w in data.weights] if data.weights is not None else [1.0] * len(ids)
    return EncodedTexts(ids, [label_map.id_of(y) for y in data.labels], weights)


def batch_loader(enc: EncodedTexts, batch_size: int, pad_id: int, *, shuffle: bool, seed: int) -> DataLoader[Batch]:
    """Batches of ``input_ids``, ``attention_mask``, ``labels``, ``weights``; shuffled reproducibly by ``seed``."""

    def collate(rows: list[int]) -> Batch:
        width = max(len(enc.ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(enc.ids[i])] = torch.tensor(enc.ids[i])
            mask[r, : len(enc.ids[i])] = 1
        labels = torch.tensor([enc.labels[i] for i in rows])
        weights = torch.tensor([enc.weights[i] for i in rows], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}

    generator = torch.Generator().manual_seed(seed)
    rows = list(range(len(enc.ids)))
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)  # type: ignore[arg-type]


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy averaged with sample weights: a weight-0 sample does not count at all.

    >>> logits, y = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    >>> round(weighted_cross_entropy(logits, y, torch.tensor([1.0, 0.0])).item(), 4)
    0.1269
    """
    losses = F.cross_entropy(logits.float(), targets, reduction="none")
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


def logits_of(model: torch.nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    return out.logits  # type: ignore[no-any-return]


def loss_and_accuracy(
    model: torch.nn.Module, loader: DataLoader[Batch], device: torch.device, amp: Callable[[], Any]
) -> tuple[float, float]:
    """Weighted mean loss (unweighted when every weight is 0) and plain accuracy over ``loader``."""
    was_training = model.training
    model.eval()
    # Sums stay on the device and are read back once, not once per batch (each read waits for the GPU).
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # weighted loss, weight, loss, correct
    n = 0
    with torch.inference_mode():
        for batch in loader:
            with amp():
                logits = logits_of(model, batch, device)
            y, w = batch["labels"].to(device), batch["weights"].to(device)
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            parts = ((losses * w).sum(), w.sum(), losses.sum(), (logits.argmax(-1) == y).sum())
            sums += torch.stack([p.double() for p in parts])
            n += len(y)
    model.train(was_training)
    weighted, weight, plain, correct = sums.tolist()
    return (weighted / weight if weight > 0 else plain / n), correct / n


def _max_length(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, override: int | None) -> int:
    # fine_tune saves its max_length as the tokenizer's model_max_length.
    positions = int(getattr(getattr(model, "config", None), "max_position_embeddings", 512))
    return override if override is not None else min(int(tokenizer.model_max_length), positions)
