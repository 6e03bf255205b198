"""From stored samples to a validated, deduplicated text-classification dataset and its splits.

Plain functions over lists of :class:`~workers.store.samples.Sample`: no SQL,
so a test feeds a list in and looks at what comes out.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas.errors import LearnloopError
from workers.store.samples import FeatureValue, LabelValue, Sample

__all__ = ["Dataset", "DatasetInvalid", "DatasetSplit", "build_dataset", "render_features", "split"]


class DatasetInvalid(LearnloopError):
    """The window's data cannot train a model; the message says why, ``report`` what was found."""

    def __init__(self, message: str, *, report: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = dict(report or {})


@dataclass(frozen=True)
class Dataset:
    """Texts, their labels and sample weights (aligned, oldest first) and a JSON-ready ``report``."""

    texts: tuple[str, ...]
    labels: tuple[LabelValue, ...]
    weights: tuple[float, ...]
    report: Mapping[str, Any]

    def __len__(self) -> int:
        return len(self.texts)


class DatasetSplit(NamedTuple):
    train: Dataset
    val: Dataset
    test: Dataset


def render_features(features: Mapping[str, FeatureValue]) -> str:
    """A stable text for a feature map: ``key: value`` pairs sorted by key.

    >>> render_features({"price": 9.5, "mobile": True, "country": "fr"})
    'country: fr; mobile: True; price: 9.5'
    """
    return "; ".join(f"{k}: {features[k]}" for k in sorted(features))


def class_name(label: LabelValue) -> str:
    """A label as a class name (a JSON object key); ``True`` and ``"True"`` are one class."""
    return str(label)


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def _percentile(sorted_values: Sequence[int], q: float) -> int:
    # Nearest rank: always a value that occurs, and exact for small lists.
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _text_of(s: Sample) -> str:
    if s.text is not None and s.text.strip():
        return s.text.strip()
    if s.features:
        return render_features(s.features)
    return ""


def build_dataset(
    samples: Sequence[Sample],
    *,
    min_samples: int = 200,
    min_per_class: int = 10,
    max_text_chars: int = 2000,
) -> Dataset:
    """Deduplicate and validate ``samples``; raise :class:`DatasetInvalid` with the reason if they cannot train.

    The text of a sample is its ``text``, else its features rendered by
    :func:`render_features`, cut to ``max_text_chars``. Samples whose texts are
    equal after collapsing whitespace and case are one example: the latest
    (by ``occurred_at``) gives the text, label and weight.
    """
    if min_samples < 1 or min_per_class < 1 or max_text_chars < 1:
        raise ValueError("min_samples, min_per_class and max_text_chars must be at least 1")
    ordered = sorted(samples, key=lambda s: (s.occurred_at, s.event_id))
    latest: dict[str, tuple[Sample, str]] = {}
    unusable = truncated = 0
    for s in ordered:
        text = _text_of(s)
        if not text:
            unusable += 1
            continue
        if len(text) > max_text_chars:
            text, truncated = text[:max_text_chars], truncated + 1
        key = _normalised(text)
        latest.pop(key, None)  # re-inserted: dict order becomes the order of the latest occurrences
        latest[key] = (s, text)
    kept = list(latest.values())
    usable = len(ordered) - unusable
    classes = Counter(class_name(s.label) for s, _ in kept)
    lengths = sorted(len(t) for _, t in kept)
    report: dict[str, Any] = {
        "n_input": len(samples),
        "n_unusable": unusable,
        "n_duplicates_dropped": usable - len(kept),
        "n_truncated": truncated,
        "n_samples": len(kept),
        "classes": dict(sorted(classes.items())),
        "class_balance": round(min(classes.values()) / max(classes.values()), 4) if classes else 0.0,
        "text_length": (
            {"min": lengths[0], "p50": _percentile(lengths, 0.5), "p95": _percentile(lengths, 0.95), "max": lengths[-1]}
            if lengths
            else {"min": 0, "p50": 0, "p95": 0, "max": 0}
        ),
        "window": {
            "start": ordered[0].occurred_at.isoformat() if ordered else None,
            "end": ordered[-1].occurred_at.isoformat() if ordered else None,
        },
    }
    _validate(report, classes, min_samples=min_samples, min_per_class=min_per_class)
    return Dataset(
        texts=tuple(t for _, t in kept),
        labels=tuple(s.label for s, _ in kept),
        weights=tuple(float(s.weight) for s, _ in kept),
        report=report,
    )


def _validate(report: Mapping[str, Any], classes: Counter[str], *, min_samples: int, min_per_class: int) -> None:
    n = report["n_samples"]
    if n == 0:
        why = f" ({report['n_unusable']} samples have neither text nor features)" if report["n_unusable"] else ""
        raise DatasetInvalid(f"no usable text{why}" if report["n_input"] else "no samples in the window", report=report)
    if n < min_samples:
        raise DatasetInvalid(f"only {n} samples (need {min_samples})", report=report)
    if len(classes) == 1:
        raise DatasetInvalid(f"only one class ({next(iter(classes))!r}) in the window", report=report)
    smallest, count = min(classes.items(), key=lambda kv: (kv[1], kv[0]))
    if count < min_per_class:
        raise DatasetInvalid(f"class {smallest!r} has {count} samples (need {min_per_class})", report=report)


def _part(ds: Dataset, indices: Sequence[int]) -> Dataset:
    labels = tuple(ds.labels[i] for i in indices)
    return Dataset(
        texts=tuple(ds.texts[i] for i in indices),
        labels=labels,
        weights=tuple(ds.weights[i] for i in indices),
        report={"n_samples": len(indices), "classes": dict(sorted(Counter(map(class_name, labels)).items()))},
    )


def split(dataset: Dataset, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42) -> DatasetSplit:
    """Stratified train/validation/test parts, the same for the same dataset and seed.

    Each class is shuffled on its own and cut by the fractions (rounded), keeping
    at least one example of every class in train; each part keeps the dataset's
    order. A part's ``report`` holds its size and class counts.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    by_class: defaultdict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(dataset.labels):
        by_class[class_name(label)].append(i)
    rng = random.Random(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for name in sorted(by_class):
        idx = by_class[name]
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        while n_test + n_val >= len(idx) and n_test + n_val > 0:
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        test += idx[:n_test]
        val += idx[n_test : n_test + n_val]
        train += idx[n_test + n_val :]
    return DatasetSplit(_part(dataset, sorted(train)), _part(dataset, sorted(val)), _part(dataset, sorted(test)))
