"""One training job, start to finish: dataset → fine-tune → evaluate vs champion → MLflow → announce.

The order of the last steps is what makes a crash safe: the version is
registered (tagged with the job id) before any alias moves, the alias moves
only after registration succeeded, and the job is marked succeeded last. A
trainer killed anywhere leaves at worst a registered version with no alias,
which nothing serves; the stale job is requeued or failed by the next trainer.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from learners.evaluation import evaluate, gate, grade
from learners.finetune import FineTuneConfig, TextData, base_model_identity, fine_tune
from learners.optimize.quantize import load as load_optimized
from learners.optimize.quantize import quantize
from learners.optimize.report import compare
from learners.textclf import TextClassifier
from schemas import ModelUpdate
from workers.store.datasets import Dataset, DatasetInvalid, build_dataset, split
from workers.store.feedback import FeedbackStore
from workers.store.jobs import job_window
from workers.store.models import TrainingJob
from workers.trainer.config import TrainerConfig
from workers.trainer.registry import ModelRegistry, code_version, model_update
from workers.trainer.stages import HeavyImports, StageClock

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    result: dict[str, Any]
    update: ModelUpdate


def _data(ds: Dataset) -> TextData:
    return TextData(list(ds.texts), _labels(ds), list(ds.weights))


def _labels(ds: Dataset) -> list[Any]:
    # A class label is bool, int or str here: regression targets never reach fine-tuning.
    return list(ds.labels)


def bounded(ds: Dataset, limit: int, seed: int = 42) -> Dataset:
    """At most ``limit`` samples of ``ds``, drawn at random (by ``seed``) and kept in their order.

    An evaluation's cost grows with its split; a few hundred samples already tell F1 to about ±0.03.
    """
    if len(ds) <= limit:
        return ds
    keep = sorted(random.Random(seed).sample(range(len(ds)), limit))
    return Dataset(
        texts=tuple(ds.texts[i] for i in keep), labels=tuple(ds.labels[i] for i in keep),
        weights=tuple(ds.weights[i] for i in keep), report={**ds.report, "n_samples": limit, "bounded_from": len(ds)},
    )  # fmt: skip


class TrainingPipeline:
    def __init__(
        self,
        *,
        store: FeedbackStore,
        registry: ModelRegistry,
        finetune: FineTuneConfig,
        config: TrainerConfig,
        source: str,
        rolls_out: Callable[[str], bool] = lambda model: False,
        online_metric: Callable[[Sequence[str], str], float | None] = lambda learners, metric: None,
        imports: HeavyImports | None = None,
    ) -> None:
        self.rolls_out = rolls_out
        self.online_metric = online_metric
        self.store = store
        self.registry = registry
        self.finetune = finetune
        self.config = config
        self.source = source
        self.imports = imports or HeavyImports()

    def dataset(self, job: TrainingJob) -> Dataset:
        window = job_window(job)
        last_n = window.last_n or (None if window.start else self.config.last_n)
        learners = list(job.learners)
        if not learners:
            raise DatasetInvalid(f"no learner names retrain_model {job.model!r} in the trainer's learners file")
        samples = self.store.window(learners, start=window.start, end=window.end, last_n=last_n)
        if not samples:
            raise DatasetInvalid(
                f"no samples in the window for learner(s) {', '.join(learners)}: the feedback worker stores "
                "samples only for learners whose entry in the learners file names a retrain_model "
                "(and only with feedback.store_samples on)",
                report={"n_input": 0, "n_samples": 0, "learners": learners},
            )
        return build_dataset(samples, min_samples=self.config.min_samples, min_per_class=self.config.min_per_class)

    def run(
        self,
        job: TrainingJob,
        *,
        progress: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool] | None = None,
    ) -> JobOutcome:
        t0, clock = time.monotonic(), StageClock()
        with clock("startup"):
            self.imports.wait()  # torch, transformers, peft: started in the background when the worker started

        progress({"stage": "dataset"})
        with clock("dataset"):
            ds = self.dataset(job)  # DatasetInvalid fails the job with its reason
            parts = split(ds, val_fraction=self.config.val_fraction, test_fraction=self.config.test_fraction)
            val, test = (bounded(p, self.config.max_eval_samples) for p in (parts.val, parts.test))
        log.info("job %s: %d samples (%s)", job.id, len(ds), ds.report.get("classes"))
        finetune = job_finetune_config(self.finetune, job.params)
        champion_version = self.registry.alias_version(job.model, "champion")
        with tempfile.TemporaryDirectory(prefix="learnloop-train-") as tmp, self.registry.start_run(
            job.id, job.model, {**finetune.model_dump(), "n_samples": len(ds), "reason": job.reason}
        ) as run:
            run.log_dict("dataset.json", dict(ds.report))
            def report(p: dict[str, Any]) -> None:
                progress(p)
                _log_step(run, p)

            with clock("startup"):
                champion_dir = self._champion_dir(job.model, champion_version, Path(tmp))
            with clock("training"):
                ft = fine_tune(
                    _data(parts.train), _data(val), finetune, Path(tmp) / "model",
                    progress=report, should_stop=should_stop,
                    warm_start=champion_dir if self.config.warm_start else None,
                )
            progress({"stage": "evaluate"})
            with clock("evaluation"):
                candidate = evaluate(TextClassifier.load(ft.model_dir), list(test.texts), _labels(test))
                champion = (
                    evaluate(TextClassifier.load(champion_dir), list(test.texts), _labels(test))
                    if champion_dir is not None else None
                )  # fmt: skip
                # A first candidate must also beat the online learner that feeds the model (issue 11, point 5).
                online = self.online_metric(list(job.learners), "f1") if champion is None else None
                decision = gate(candidate, champion, margin=self.config.margin, alpha=self.config.alpha,
                                labels=_labels(test), online_metric=online)
                # Beating a champion offline earns a rollout on live traffic, not the alias itself.
                rollout = decision.promote and champion is not None and self.rolls_out(job.model)
                if rollout:
                    decision = replace(decision, alias="challenger",
                                       reason=f"{decision.reason}; rolled out against v{champion_version}")
                metrics = {**candidate.metrics(), "train_samples_per_s": ft.train_samples_per_s,
                           "best_val_loss": ft.best_val_loss, "epochs_run": float(ft.epochs_run),
                           "steps": float(ft.steps)}
                if champion is not None:
                    metrics.update({f"champion_{k}": v for k, v in champion.metrics().items()})
                if decision.p_value is not None:
                    metrics["mcnemar_p"] = decision.p_value
                if online is not None:
                    metrics["online_learner_f1"] = online
                if self.config.quantize:
                    self._int8(run, ft.model_dir, Path(tmp) / "int8", parts)
            run.log_params({"warm_start": champion_version if ft.warm_start else "", "stopped_by": ft.stopped_by})
            run.log_metrics({**metrics, **{f"stage_{k}_s": v for k, v in clock.seconds.items()}})
            letter = grade(candidate)
            progress({"stage": "register"})
            with clock("registration"):
                # No alias tag: aliases move (promotion, rollback), a tag would go stale; read them from the registry.
                version = self.registry.register(
                    run, ft.model_dir, job.model, tags={"grade": letter, "reason": job.reason},
                    base_model=base_model_identity(self.finetune),
                )
                # Only a fully registered version ever gets an alias.
                self.registry.set_alias(job.model, decision.alias, version)
            run.log_metrics({"stage_registration_s": clock.seconds["registration"]})
        window = job_window(job)
        update = model_update(
            job.model, version, decision.alias, candidate.metrics(),
            parent_version=champion_version, data_window=window, n_samples=len(ds),
            code_version=code_version(), source=self.source,
        ).model_copy(update={"rollout": rollout})
        result = {
            "version": version, "alias": decision.alias, "promoted": decision.promote and not rollout,
            "rollout": rollout, "reason": decision.reason,
            "grade": letter, "metrics": candidate.metrics(),
            "champion_metrics": champion.metrics() if champion else None, "parent_version": champion_version,
            "dataset": dict(ds.report), "device": ft.device, "epochs_run": ft.epochs_run, "steps": ft.steps,
            "stopped_by": ft.stopped_by, "warm_start": champion_version if ft.warm_start else None,
            "train_samples_per_s": ft.train_samples_per_s, "duration_s": round(time.monotonic() - t0, 2),
            "n_eval": len(test), "timings_s": dict(clock.seconds), "uri": update.uri,
        }
        log.info("job %s: %s version %s → %s (%s)", job.id, job.model, version, decision.alias, decision.reason)
        return JobOutcome(result, update)

    def _int8(self, run: Any, model_dir: Path, out: Path, parts: Any) -> None:
        """An int8 copy of the candidate (tolerant layers only), reported against it on the test split."""
        scheme = self.config.quantize_scheme
        quantize(model_dir, out, scheme=scheme, texts=list(parts.val.texts), labels=_labels(parts.val),
                 calibration=list(parts.train.texts))
        report = compare(TextClassifier.load(model_dir), model_dir, load_optimized(out), out,
                         list(parts.test.texts), _labels(parts.test), method="quantize", params={"scheme": scheme})
        run.log_metrics(report.metrics("int8_"))
        run.log_dict("optimization/int8.json", report.to_dict())
        run.log_artifact_dir(out, "int8")

    def _champion_dir(self, model: str, version: str | None, tmp: Path) -> Path | None:
        """The champion's model folder: evaluated against the candidate and, by default, where training starts."""
        return self.registry.model_dir(model, version, tmp / "champion") if version is not None else None


def job_finetune_config(base: FineTuneConfig, params: Mapping[str, Any] | None) -> FineTuneConfig:
    """``base`` with a job's overrides (``training.*`` names), validated as the settings are."""
    return FineTuneConfig.model_validate({**base.model_dump(), **(params or {})}) if params else base


def _log_step(run: Any, p: dict[str, Any]) -> None:
    if p.get("stage") == "eval":
        step = int(p.get("step", 0))
        run.log_metrics({k: float(p[k]) for k in ("val_loss", "val_accuracy") if p.get(k) is not None}, step=step)


def trainable_learners(model: str, declared: Sequence[tuple[str, str | None]]) -> list[str]:
    """Learners whose feedback trains ``model``: those naming it as their retrain_model.

    A learner named like the model does not count: its samples are stored only if it names a retrain_model.

    >>> trainable_learners("sea-text", [("sea", "sea-text"), ("other", None), ("sea-text", None)])
    ['sea']
    """
    return [name for name, retrain in declared if retrain == model]
