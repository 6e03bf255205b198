"""The in-process rows of the training benchmark: fine_tune and TextClassifier.predict against bare PyTorch loops.

Part of ``bench.training`` (``.venv/bin/python -m bench.training``); bench/README.md says what it measures.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.training_data import SHAPES, Result, tickets, token_stats
from learners.finetune import FineTuneConfig, TextData, fine_tune, resolve_base_model
from learners.textclf import (
    Batch,
    LabelMap,
    TextClassifier,
    batch_loader,
    encode_texts,
    load_tokenizer,
    quantize_dynamic,
    quiet_transformers,
    weighted_cross_entropy,
)

BARE_BATCHES, WARMUP_BATCHES = 24, 2


# --- measuring ----------------------------------------------------------------------------------------------------


class Peak:
    """Peak memory during a block: RSS sampled every 10 ms (psutil, else the process's high-water mark), and
    CUDA's max allocated when ``device`` is CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_mb = self.peak_mb = 0.0
        self.cuda_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rss: Callable[[], float] | None = None

    def __enter__(self) -> Peak:
        with contextlib.suppress(ImportError):
            import psutil

            proc = psutil.Process()
            self._rss = lambda: float(proc.memory_info().rss) / 2**20
        self.start_mb = self.peak_mb = self._rss() if self._rss else _maxrss_mb()
        if self._rss is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def _watch(self) -> None:
        assert self._rss is not None
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        else:
            self.peak_mb = _maxrss_mb()
        if self.device.type == "cuda":
            self.cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

    def report(self) -> Result:
        out = {"peak_rss_mb": round(self.peak_mb), "rss_growth_mb": round(self.peak_mb - self.start_mb)}
        return out | ({"cuda_peak_mb": round(self.cuda_mb)} if self.cuda_mb is not None else {})


def _maxrss_mb() -> float:
    high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return high / 2**20 if sys.platform == "darwin" else high / 2**10


@dataclass
class Clock:
    """Wall and CPU time of a block (CPU: every thread of this process)."""

    wall: float = 0.0
    cpu: float = 0.0
    _t: tuple[float, float] = field(default=(0.0, 0.0), repr=False)

    def __enter__(self) -> Clock:
        self._t = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._t[0], time.process_time() - self._t[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_for(device: torch.device, config: FineTuneConfig) -> contextlib.AbstractContextManager[Any]:
    """What fine_tune trains under: bf16 (else fp16) autocast on CUDA with mixed precision, else nothing."""
    if device.type == "cuda" and config.mixed_precision:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


# --- (1) training and inference in-process ------------------------------------------------------------------------


def batches(texts: list[str], labels: list[bool], config: FineTuneConfig, n: int) -> tuple[list[Batch], int]:
    """The first ``n`` batches fine_tune draws (same tokenizer, padding and shuffle seed), and the pad id."""
    base = resolve_base_model(config)
    tokenizer = load_tokenizer(base)
    data = TextData(texts, labels)
    enc = encode_texts(tokenizer, data, LabelMap.for_training(data, data), config.max_length)
    pad_id = int(tokenizer.pad_token_id or 0)
    loader = batch_loader(enc, config.batch_size, pad_id, shuffle=True, seed=config.seed)
    out: list[Batch] = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    return out, pad_id


def bare_training(texts: list[str], labels: list[bool], config: FineTuneConfig, device: torch.device) -> Result:
    """The baseline: the same LoRA model and optimizer stepping on pre-collated batches, nothing else."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    todo, _ = batches(texts, labels, config, WARMUP_BATCHES + BARE_BATCHES)
    torch.manual_seed(config.seed)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_base_model(config), num_labels=2, local_files_only=True
        )
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
    )
    peft_model = get_peft_model(model, lora).to(device)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.learning_rate)
    peft_model.train()
    todo = [{k: v.to(device) for k, v in b.items()} for b in todo]

    def step(b: Batch) -> None:
        with amp_for(device, config):
            logits = peft_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        weighted_cross_entropy(logits, b["labels"], b["weights"]).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for b in todo[:WARMUP_BATCHES]:
        step(b)
    sync(device)
    timed = todo[WARMUP_BATCHES:]
    with Clock() as c:
        for b in timed:
            step(b)
        sync(device)
    n, tokens = sum(len(b["labels"]) for b in timed), sum(b["input_ids"].numel() for b in timed)
    return {
        "samples_per_s": round(n / c.wall, 1),
        "padded_tokens_per_s": round(tokens / c.wall),
        "batches": len(timed),
        "mean_width": round(tokens / n, 1),
        "cpu_per_wall": round(c.cpu / c.wall, 2),
    }


def training(
    texts: list[str],
    labels: list[bool],
    val: tuple[list[str], list[bool]],
    config: FineTuneConfig,
    device: torch.device,
    out_dir: Path,
) -> Result:
    """fine_tune as the trainer calls it; its own samples/s counts the training loop only (no eval, no loading)."""
    with Peak(device) as peak, Clock() as c:
        ft = fine_tune(TextData(texts, labels), TextData(*val), config, out_dir)
    widths, _ = batches(texts, labels, config, math.ceil(len(texts) / config.batch_size))
    tokens = sum(b["input_ids"].numel() for b in widths)
    return {
        "samples_per_s": ft.train_samples_per_s,
        "padded_tokens_per_s": round(ft.train_samples_per_s * tokens / len(texts)),
        "mean_width": round(tokens / len(texts), 1),
        "wall_s": round(c.wall, 1),
        "cpu_per_wall": round(c.cpu / c.wall, 2),
        "steps": ft.steps,
        "epochs_run": ft.epochs_run,
        "val_accuracy": round(ft.best_val_accuracy, 3),
        "device": ft.device,
        "fine_tune_peak_memory_mb": ft.peak_memory_mb,
        **peak.report(),
    }


def bare_inference(clf: TextClassifier, texts: list[str], batch_size: int) -> Result:
    """The baseline: the model's forward pass on batches tokenised beforehand (same padding), in inference mode."""
    chunks = []
    for i in range(0, len(texts), batch_size):
        enc = clf.tokenizer(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=clf.max_length, return_tensors="pt"
        )
        chunks.append({k: v.to(clf.device) for k, v in enc.items()})
    with torch.inference_mode():
        for inputs in chunks[:WARMUP_BATCHES]:
            clf.model(**inputs)
        sync(clf.device)
        with Clock() as c:
            for inputs in chunks:
                clf.model(**inputs).logits.float().softmax(-1)
            sync(clf.device)
    return {"samples_per_s": round(len(texts) / c.wall, 1), "cpu_per_wall": round(c.cpu / c.wall, 2)}


def inference(clf: TextClassifier, texts: list[str], labels: list[bool], batch_size: int) -> tuple[Result, list[Any]]:
    """``TextClassifier.predict`` as serving calls it: tokenise, forward, softmax, back to label values."""
    clf.predict(texts[: batch_size * WARMUP_BATCHES], batch_size=batch_size)
    with Peak(clf.device) as peak, Clock() as c:
        predicted = [y for y, _ in clf.predict(texts, batch_size=batch_size)]
    accuracy = sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)
    return (
        {
            "samples_per_s": round(len(texts) / c.wall, 1),
            "cpu_per_wall": round(c.cpu / c.wall, 2),
            "accuracy": round(accuracy, 3),
            **peak.report(),
        },
        predicted,
    )


def in_process(args: argparse.Namespace, device: torch.device, tmp: Path, res: Result) -> None:
    config = FineTuneConfig(
        max_length=args.max_length,
        batch_size=args.batch_size,
        epochs=args.epochs,
        device=args.device,
        num_threads=args.threads,
    )
    tokenizer = load_tokenizer(resolve_base_model(config))
    data = {s: tickets(args.samples, s) for s in SHAPES}
    n_val = max(32, args.samples // 10)
    held = {s: tickets(args.samples + n_val, s, seed=12) for s in SHAPES}  # validation and inference texts
    res["texts"] = {
        s: token_stats([len(ids) for ids in tokenizer(data[s][0])["input_ids"]], args.max_length) for s in SHAPES
    }
    res["train"], res["infer"] = {}, {}
    for shape in SHAPES:
        texts, labels = data[shape]
        val = (held[shape][0][:n_val], held[shape][1][:n_val])
        print(f"... training on {args.samples:,} {shape} texts", file=sys.stderr, flush=True)
        bare = bare_training(texts, labels, config, device)
        tuned = training(texts, labels, val, config, device, tmp / f"model-{shape}")
        res["train"][shape] = {
            "bare": bare,
            "fine_tune": tuned,
            "ratio": round(tuned["samples_per_s"] / bare["samples_per_s"], 2),
        }
    model_dir = tmp / "model-mixed"  # every inference row serves the model trained on the mixed texts
    int8_dir = quantize_dynamic(model_dir, tmp / "model-mixed-int8")
    res["model_files_mb"] = {
        k: round(sum(f.stat().st_size for f in d.iterdir()) / 2**20, 1)
        for k, d in (("fp32", model_dir), ("int8", int8_dir))
    }
    devices = [device] if device.type == "cpu" else [device, torch.device("cpu")]
    clfs = {
        f"fp32-{d.type}": TextClassifier.load(model_dir, device=d.type, max_length=args.max_length) for d in devices
    }
    clfs["int8-cpu"] = TextClassifier.load_quantized(int8_dir, max_length=args.max_length)
    for shape in SHAPES:
        texts, labels = held[shape][0][n_val:], held[shape][1][n_val:]
        print(f"... inference on {len(texts):,} {shape} texts", file=sys.stderr, flush=True)
        row: Result = {}
        preds: dict[str, list[Any]] = {}
        for name, clf in clfs.items():
            row[name], preds[name] = inference(clf, texts, labels, args.batch_size)
            if clf.quantized:
                agree = sum(a == b for a, b in zip(preds[name], preds["fp32-cpu"], strict=True)) / len(texts)
                row[name]["agrees_with_fp32"] = round(agree, 4)
                row[name]["vs_fp32"] = round(row[name]["samples_per_s"] / row["fp32-cpu"]["samples_per_s"], 2)
            else:
                row[name]["bare"] = bare = bare_inference(clf, texts, args.batch_size)
                row[name]["ratio"] = round(row[name]["samples_per_s"] / bare["samples_per_s"], 2)
        res["infer"][shape] = row
