"""The training loop of ``learners.finetune.fine_tune``: LoRA on a sequence classifier, early stopping, budgets.

A run ends at the last epoch, at ``max_steps``, when the validation loss stops improving (``patience``) or
when ``max_seconds`` of training have passed; in every case the last steps are evaluated and the best
weights are restored. torch, transformers and peft are imported inside the function, like ``fine_tune``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learners.finetune import FineTuneConfig, Progress, TrainingCancelled

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from learners.textclf import EncodedTexts, LabelMap

__all__ = ["Outcome", "run_training"]

logger = logging.getLogger("learners.finetune")  # one logger for the routine: its lines read as one run

_PACE_STEPS = 5  # optimizer steps timed before a time budget fixes the schedule's horizon


@dataclass
class Outcome:
    model: PeftModel
    history: list[dict[str, Any]]
    best_val_loss: float
    best_val_accuracy: float
    epochs_run: int
    steps: int
    samples_per_s: float
    stopped_by: str


def _schedule(optimizer: torch.optim.Optimizer, warmup_ratio: float, plan: dict[str, int]) -> Any:
    """Linear warm-up then linear decay to 0 at ``plan["horizon"]``, which a time budget may shorten mid-run."""
    import torch

    def factor(step: int) -> float:
        horizon = max(plan["horizon"], 1)
        warmup = int(warmup_ratio * horizon)
        if step < warmup:
            return step / max(warmup, 1)
        return max(0.0, (horizon - step) / max(horizon - warmup, 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run_training(
    train: EncodedTexts,
    val: EncodedTexts,
    config: FineTuneConfig,
    base: Path,
    label_map: LabelMap,
    device: torch.device,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    trial: int | None = None,
) -> Outcome:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

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
    plan = {"horizon": total}
    scheduler = _schedule(optimizer, config.warmup_ratio, plan)
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
    last_eval_step, stop, stopped_by = -1, False, "epochs"
    budget_start = time.monotonic()
    deadline = budget_start + config.max_seconds if config.max_seconds else math.inf

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
            now = time.monotonic()
            if step == _PACE_STEPS and deadline < math.inf:
                # Steps the budget leaves room for at the pace so far: the schedule decays to 0 there, so a run
                # cut by the clock ends at a low learning rate, as a run to the last epoch would.
                fits = step + int((deadline - now) / max((now - budget_start) / step, 1e-9))
                plan["horizon"] = max(step + 1, min(total, fits))
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
                stopped_by = "early_stopping" if stop else stopped_by
            if not stop and time.monotonic() >= deadline:
                stop, stopped_by = True, "time_budget"
            if stop or step >= total:
                break
        train_time += time.perf_counter() - started
        if last_eval_step != step:  # a run cut by the budget is still evaluated on what it learned last
            early = evaluate(epoch)
            stop, stopped_by = (True, "early_stopping") if early and not stop else (stop, stopped_by)
        if stop or step >= total:
            stopped_by = "max_steps" if not stop and config.max_steps and step >= config.max_steps else stopped_by
            break
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)  # only the trainable tensors: LoRA and the head
    samples_per_s = round(seen / max(train_time, 1e-9), 1)
    return Outcome(model, history, best_loss, best_acc, epochs_run, step, samples_per_s, stopped_by)
