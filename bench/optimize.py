"""Each optimization method against its float32 parent, in one run, with the seed's claimed bounds beside.

    .venv/bin/python -m bench.optimize                # full size
    .venv/bin/python -m bench.optimize --tiny         # a smoke run: the figures mean nothing

A MiniLM classifier is fine-tuned on synthetic tickets (``bench.training_data``), then every method
writes a copy and ``learners.optimize.report.compare`` measures it against the parent on the same
held-out split. Speed-up is the parent's p50 latency over the copy's (batch 1 and batch 32).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bench.training_data import tickets
from learners.finetune import FineTuneConfig, TextData, fine_tune
from learners.optimize.distill import distill
from learners.optimize.prune import prune
from learners.optimize.quantize import candidate_layers, load, quantize
from learners.optimize.report import OptimizationReport, compare
from learners.textclf import TextClassifier

#: What the seed platform claims for each family of method: (speed-up, accuracy loss in points).
SEED_BOUNDS = {"quantize": "2-4x at <2 pts", "prune": "30-50% smaller at <5 pts", "distill": "5-10x at <10 pts"}


def methods(
    val: tuple[list[str], list[bool]], train: tuple[list[str], list[bool]], recovery_steps: int
) -> dict[str, tuple[str, Callable[[Path, Path], object]]]:
    """Row name -> (method family, writer of the optimized copy)."""
    texts, labels = val
    calibration = train[0]

    def pruned(method: str, sparsity: float) -> Callable[[Path, Path], object]:
        return lambda src, out: prune(src, out, method=method, sparsity=sparsity, texts=train[0], labels=train[1],
                                      recovery_steps=recovery_steps)  # fmt: skip

    rows = {
        "int8 dynamic (tolerant layers)": lambda src, out: quantize(src, out, texts=texts, labels=labels),
        "int8 static (tolerant layers)": lambda src, out: quantize(
            src, out, scheme="static", texts=texts, labels=labels, calibration=calibration
        ),
        # The old scheme, for contrast: every encoder linear layer, whatever its sensitivity.
        "int8 dynamic (every layer)": lambda src, out: quantize(src, out, layers=encoder_layers(src)),
        "bf16": lambda src, out: quantize(src, out, scheme="bf16"),
    }
    return {
        **{name: ("quantize", write) for name, write in rows.items()},
        "magnitude 50% + recovery": ("prune", pruned("magnitude", 0.5)),
        "structured FFN 30% + recovery": ("prune", pruned("structured", 0.3)),
        "structured FFN 50% + recovery": ("prune", pruned("structured", 0.5)),
        # Half the labels hidden: the student learns those texts from the teacher's soft labels alone.
        "distilled, 3 of 6 layers": ("distill", lambda src, out: distill(
            src, out, train[0], [y if i % 2 else None for i, y in enumerate(train[1])], steps=recovery_steps * 3
        )),
    }


def encoder_layers(src: Path) -> list[str]:
    return candidate_layers(TextClassifier.load(src, device="cpu").model)


def row(name: str, family: str, r: OptimizationReport) -> str:
    d = r.delta
    return (
        f"| {name} | {r.optimized.size_bytes / 1e6:.1f} MB ({d['size_ratio']:.2f}x) "
        f"| {r.optimized.nonzero_params / 1e6:.2f} M | {d['speedup_b1_p50']:.2f}x | {d['speedup_b32_p50']:.2f}x "
        f"| {r.optimized.throughput_per_s:.0f}/s | {100 * d['accuracy']:+.1f} | {100 * d['f1']:+.1f} "
        f"| {d['log_loss']:+.3f} | {r.optimized.grade} | {SEED_BOUNDS[family]} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few texts and steps: checks the bench runs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, steps, rounds = (96, 4, 3) if args.tiny else (2000, 300, 30)
    texts, labels = tickets(n, "mixed")
    cut_val, cut_test = int(n * 0.7), int(n * 0.85)
    train = TextData(texts[:cut_val], labels[:cut_val])
    val = (texts[cut_val:cut_test], labels[cut_val:cut_test])
    test = (texts[cut_test:], labels[cut_test:])
    config = FineTuneConfig(max_length=64, batch_size=16, max_steps=steps, num_threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-optimize-") as tmp:
        parent_dir = Path(tmp) / "parent"
        fine_tune(train, TextData(*val), config, parent_dir)
        parent = TextClassifier.load(parent_dir, device="cpu")
        print(f"parent: float32 MiniLM, {len(test[0])} held-out texts, CPU x{args.threads} threads\n")
        print("| method | size | non-zero params | speed-up b1 | speed-up b32 | throughput b32 | Δ accuracy (pts) "
              "| Δ F1 (pts) | Δ log-loss | grade | seed claims |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        train_pair = (list(train.texts), list(train.labels))
        for name, (family, write) in methods(val, train_pair, 2 if args.tiny else 100).items():
            out = Path(tmp) / name.replace(" ", "-").replace("%", "pc")
            write(parent_dir, out)
            report = compare(parent, parent_dir, load(out, device="cpu"), out, *test, method=family,
                             params={"name": name}, rounds=rounds)  # fmt: skip
            print(row(name, family, report), flush=True)


if __name__ == "__main__":
    main()
