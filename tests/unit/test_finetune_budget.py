"""The budgets and the warm start of fine-tuning, on CPU with the shipped MiniLM and tiny data.

A job bounded by time or steps still ends evaluated and saved; a job warm-started from an earlier
model says so and reaches a validation loss in fewer steps than one started from the base model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from learners.finetune import FineTuneConfig, FineTuneResult, TextData, TokenCache, fine_tune, resolve_base_model
from learners.textclf import LabelMap, TextClassifier, encode_texts, load_tokenizer
from learners.training_loop import _schedule
from tests.unit.test_finetune import FAST, sentiment


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def evals(result: FineTuneResult) -> list[dict[str, Any]]:
    return [e for e in result.history if e["stage"] == "eval"]


def test_a_run_cut_by_the_time_budget_is_still_evaluated_and_saved(tmp_path: Path) -> None:
    texts, labels = sentiment(64, seed=11)
    val = TextData(*sentiment(16, seed=12))
    # 40 epochs would take minutes; the budget ends the run after about a second of training.
    config = FineTuneConfig(**{**FAST, "max_seconds": 1.0, "batch_size": 8}, epochs=40, learning_rate=5e-3)
    result = fine_tune(TextData(texts, labels), val, config, tmp_path)
    assert result.stopped_by == "time_budget"
    assert 0 < result.steps < 40 * 8
    assert evals(result)[-1]["step"] == result.steps  # the last steps were evaluated before stopping
    assert result.best_val_loss == min(e["val_loss"] for e in evals(result))
    clf = TextClassifier.load(tmp_path)
    assert len(clf.predict(list(val.texts))) == len(val.texts)


def test_a_run_cut_by_the_step_budget_says_so(tmp_path: Path) -> None:
    texts, labels = sentiment(64, seed=13)
    config = FineTuneConfig(**{**FAST, "batch_size": 8}, epochs=5, max_steps=3)
    result = fine_tune(TextData(texts, labels), TextData(*sentiment(8, seed=14)), config, tmp_path)
    assert (result.stopped_by, result.steps) == ("max_steps", 3)
    assert evals(result)[-1]["step"] == 3


def test_the_schedule_ends_at_a_horizon_the_budget_shortened() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    plan = {"horizon": 100}
    scheduler = _schedule(optimizer, 0.1, plan)
    assert scheduler.get_last_lr() == [0.0]  # warm-up starts at 0
    plan["horizon"] = 10  # the pace says only 10 steps fit the budget: warm-up 1, then down to 0 at 10
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(5 / 9)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == [0.0]


def steps_to_reach(result: FineTuneResult, loss: float) -> int:
    return int(next(e["step"] for e in evals(result) if e["val_loss"] <= loss))


def test_a_warm_start_from_an_earlier_model_needs_fewer_steps_to_the_same_val_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    val = TextData(*sentiment(32, seed=16))
    config = FineTuneConfig(**FAST, epochs=3, learning_rate=5e-3, eval_every_steps=1, patience=20)
    cold = fine_tune(TextData(*sentiment(64, seed=15)), val, config, tmp_path / "cold")
    assert cold.warm_start is None and cold.params["warm_start"] is None
    target = cold.best_val_loss * 1.1  # a loss the cold run reached only after training a while
    assert steps_to_reach(cold, target) >= 4, [e["val_loss"] for e in evals(cold)]

    # The next window: new samples of the same task, started from the first model.
    with caplog.at_level(logging.INFO, logger="learners.finetune"):
        warm = fine_tune(TextData(*sentiment(64, seed=17)), val, config, tmp_path / "warm",
                         warm_start=tmp_path / "cold")  # fmt: skip
    assert warm.warm_start == tmp_path / "cold" and warm.params["warm_start"] == str(tmp_path / "cold")
    assert f"warm start: training starts from {tmp_path / 'cold'}" in caplog.text
    assert steps_to_reach(warm, target) < steps_to_reach(cold, target) / 2, [e["val_loss"] for e in evals(warm)]


def test_a_warm_start_whose_labels_differ_starts_from_the_base_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts, labels = sentiment(16, seed=18)
    LabelMap(("neg", "pos")).save(tmp_path)  # an earlier model with string labels; the window has bools
    config = FineTuneConfig(**{**FAST, "batch_size": 8}, max_steps=1)
    with caplog.at_level(logging.INFO, logger="learners.finetune"):
        result = fine_tune(TextData(texts, labels), TextData(texts, labels), config, tmp_path / "m",
                           warm_start=tmp_path)  # fmt: skip
    assert result.warm_start is None
    assert "warm start from" in caplog.text and "training starts from the base model" in caplog.text


def test_the_token_cache_tokenises_a_text_once_and_gives_the_same_ids() -> None:
    tokenizer = load_tokenizer(resolve_base_model(FineTuneConfig()))
    texts, labels = sentiment(20, seed=19)
    label_map = LabelMap.from_labels(labels)
    cache = TokenCache(max_texts=30)
    first = cache.encode(tokenizer, TextData(texts, labels), label_map, 16)
    assert first == encode_texts(tokenizer, TextData(texts, labels), label_map, 16)
    more, more_labels = sentiment(20, seed=20)
    second = cache.encode(tokenizer, TextData(texts[10:] + more, labels[10:] + more_labels), label_map, 16)
    assert second.ids[:10] == first.ids[10:]
    assert cache.hits >= 10 and cache.misses <= len(set(texts)) + len(set(more))
    assert len(cache._ids) <= 30
