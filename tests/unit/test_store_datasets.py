"""Datasets from stored samples: text rendering, dedup, the report, validation, stratified splits."""

from __future__ import annotations

import doctest
import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas.errors import LearnloopError
from workers.store import datasets, samples
from workers.store.datasets import Dataset, DatasetInvalid, build_dataset, render_features, split
from workers.store.samples import FeatureValue, LabelValue, Sample

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def sample(
    i: int,
    label: LabelValue,
    text: str | None = None,
    *,
    features: dict[str, FeatureValue] | None = None,
    minutes: int | None = None,
    weight: float = 1.0,
) -> Sample:
    at = T0 + timedelta(minutes=i if minutes is None else minutes)
    if text is None and features is None:
        text = f"example number {i}"
    return Sample(
        event_id=f"e-{i:05d}", learner="sentiment", label=label, occurred_at=at, source="test",
        text=text, features=features, weight=weight, stored_at=at,
    )  # fmt: skip


def balanced(n: int, labels: tuple[LabelValue, ...] = (True, False)) -> list[Sample]:
    return [sample(i, labels[i % len(labels)]) for i in range(n)]


def invalid(samples_: list[Sample], **kw: int) -> str:
    with pytest.raises(DatasetInvalid) as info:
        build_dataset(samples_, **kw)
    assert isinstance(info.value, LearnloopError)
    assert info.value.report["n_input"] == len(samples_)
    return str(info.value)


def test_a_valid_window_becomes_aligned_texts_labels_weights() -> None:
    rows = [*balanced(40), sample(99, False, "light", weight=0.3)]
    ds = build_dataset(rows, min_samples=20, min_per_class=5)
    assert len(ds) == len(ds.labels) == len(ds.weights) == 41
    assert ds.texts[0] == "example number 0" and ds.labels[0] is True
    assert (ds.texts[-1], ds.labels[-1], ds.weights[-1]) == ("light", False, 0.3)
    r = ds.report
    assert r["n_samples"] == 41 and r["classes"] == {"False": 21, "True": 20}
    assert r["class_balance"] == round(20 / 21, 4)
    assert r["window"] == {"start": T0.isoformat(), "end": (T0 + timedelta(minutes=99)).isoformat()}
    assert r["text_length"]["min"] == len("light") and r["text_length"]["max"] == len("example number 39")
    json.dumps(r)  # the report goes into the job record as it is


def test_features_render_stably_when_there_is_no_text() -> None:
    assert render_features({"b": 2, "a": "x", "c": False}) == "a: x; b: 2; c: False"
    s = sample(1, True, features={"price": 9.5, "country": "fr"})
    blank = sample(2, False, "   ", features={"price": 3.0})
    ds = build_dataset([s, blank], min_samples=1, min_per_class=1)
    assert ds.texts == ("country: fr; price: 9.5", "price: 3.0")


def test_duplicates_by_normalised_text_keep_the_latest_label() -> None:
    rows = [
        sample(1, True, "Great  product"),
        sample(2, False, "other text"),
        sample(3, False, "great product "),  # the same text, relabelled later
        sample(4, True, "third"),
    ]
    ds = build_dataset(list(reversed(rows)), min_samples=1, min_per_class=1)  # input order does not matter
    assert ds.report["n_duplicates_dropped"] == 1
    assert list(zip(ds.texts, ds.labels, strict=True)) == [
        ("other text", False),
        ("great product", False),
        ("third", True),
    ]


def test_long_texts_are_cut() -> None:
    ds = build_dataset([sample(1, True, "x" * 50), sample(2, False, "y" * 5)], min_samples=1, min_per_class=1,
                       max_text_chars=10)  # fmt: skip
    assert ds.texts[0] == "x" * 10
    assert ds.report["n_truncated"] == 1 and ds.report["text_length"]["max"] == 10


def test_text_length_percentiles() -> None:
    rows = [sample(i, i % 2 == 0, "w" * (i + 1)) for i in range(100)]
    r = build_dataset(rows, min_samples=1, min_per_class=1).report["text_length"]
    assert r == {"min": 1, "p50": 50, "p95": 95, "max": 100}


def test_too_few_samples() -> None:
    assert invalid(balanced(37)) == "only 37 samples (need 200)"


def test_duplicates_do_not_count_towards_the_minimum() -> None:
    rows = balanced(30) + [sample(100 + i, True, "example number 0") for i in range(10)]
    assert invalid(rows, min_samples=31, min_per_class=1) == "only 30 samples (need 31)"


def test_only_one_class() -> None:
    assert invalid(balanced(20, (True,)), min_samples=10) == "only one class ('True') in the window"


def test_a_class_too_small() -> None:
    rows = [sample(i, True) for i in range(30)] + [sample(100 + i, False) for i in range(3)]
    assert invalid(rows, min_samples=10) == "class 'False' has 3 samples (need 10)"


def test_the_smallest_of_several_classes_is_named() -> None:
    rows = balanced(60, ("pos", "neg", "neutral")) + [sample(200 + i, "spam") for i in range(2)]
    assert invalid(rows, min_samples=10, min_per_class=5) == "class 'spam' has 2 samples (need 5)"


def test_no_usable_text() -> None:
    empty = [sample(i, True, "  \n ") for i in range(5)]
    assert invalid(empty) == "no usable text (5 samples have neither text nor features)"
    assert invalid([]) == "no samples in the window"


def test_bad_thresholds_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        build_dataset(balanced(10), min_samples=0)


def test_sample_needs_input_and_an_aware_time() -> None:
    with pytest.raises(ValueError, match="needs text or features"):
        sample(1, True).__class__(event_id="e", learner="l", label=1, occurred_at=T0, source="s", stored_at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        samples.SampleIn(event_id="e", learner="l", label=1, occurred_at=datetime(2026, 1, 1), source="s", text="t")


# -- splitting ------------------------------------------------------------------------


def dataset(n_true: int, n_false: int) -> Dataset:
    rows = [sample(i, True) for i in range(n_true)] + [sample(1000 + i, False) for i in range(n_false)]
    return build_dataset(rows, min_samples=1, min_per_class=1)


def test_split_is_stratified_and_covers_every_example_once() -> None:
    ds = dataset(100, 40)
    parts = split(ds)
    assert [p.report["classes"] for p in parts] == [
        {"False": 28, "True": 70},
        {"False": 6, "True": 15},
        {"False": 6, "True": 15},
    ]
    texts = [t for p in parts for t in p.texts]
    assert sorted(texts) == sorted(ds.texts)
    for p in parts:  # each part keeps the dataset's (chronological) order
        assert list(p.texts) == [t for t in ds.texts if t in set(p.texts)]
        assert all(ds.labels[ds.texts.index(t)] == y for t, y in zip(p.texts, p.labels, strict=True))


def test_split_is_deterministic_and_depends_on_the_seed() -> None:
    ds = dataset(60, 60)
    assert split(ds) == split(ds)
    assert split(ds, seed=1).test.texts != split(ds, seed=2).test.texts


def test_small_classes_keep_an_example_in_train() -> None:
    parts = split(dataset(2, 1), val_fraction=0.4, test_fraction=0.4)
    assert parts.train.report["classes"] == {"False": 1, "True": 1}
    assert len(parts.train) + len(parts.val) + len(parts.test) == 3


def test_split_fractions_are_checked() -> None:
    with pytest.raises(ValueError):
        split(dataset(10, 10), val_fraction=0.5, test_fraction=0.5)
    no_val = split(dataset(10, 10), val_fraction=0.0, test_fraction=0.2)
    assert (len(no_val.train), len(no_val.val), len(no_val.test)) == (16, 0, 4)


@pytest.mark.parametrize("module", [datasets, samples])
def test_doctests(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]
