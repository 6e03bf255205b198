"""Routing between champion and challenger by rollout state, and the bodies the model route takes."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import RolloutEvent
from streams.routing import route, rows, wanted_versions
from workers.api.ingest import Rejection
from workers.api.model_inputs import decode_model_inputs

BOTH = frozenset({"3", "4"})


def rollout(state: Any = "running", mode: Any = "canary", share: float = 25.0) -> RolloutEvent:
    return RolloutEvent(source="t", model="m", rollout_id="r1", state=state, mode=mode, step=0, share=share,
                        champion_version="3", challenger_version="4")  # fmt: skip


def test_a_canary_routes_its_share_stickily_and_a_larger_share_keeps_the_challengers() -> None:
    keys = [f"user-{i}" for i in range(4000)]
    at25 = [route(rollout(share=25.0), k, served="3", loaded=BOTH) for k in keys]
    at50 = [route(rollout(share=50.0), k, served="3", loaded=BOTH) for k in keys]
    share = sum(r.version == "4" for r in at25) / len(keys)
    assert abs(share - 0.25) < 0.025
    assert at25 == [route(rollout(share=25.0), k, served="3", loaded=BOTH) for k in keys]  # sticky
    assert all(b.version == "4" for a, b in zip(at25, at50, strict=True) if a.version == "4")  # monotone
    assert {(r.arm, r.version) for r in at25} == {("champion", "3"), ("challenger", "4")}


@pytest.mark.parametrize("state", ["paused", "promoted", "rolled_back", "aborted", "inconclusive"])
def test_only_a_running_rollout_gives_the_challenger_traffic(state: str) -> None:
    routes = {route(rollout(state=state, share=100.0), f"u{i}", served="3", loaded=BOTH) for i in range(50)}
    assert {r.version for r in routes} == {"3"} and all(r.shadow_version is None for r in routes)
    assert wanted_versions(rollout(state=state)) == (BOTH if state == "paused" else frozenset())


def test_a_shadow_never_answers_and_a_loading_challenger_never_does_either() -> None:
    shadow = {route(rollout(mode="shadow", share=100.0), f"u{i}", served="3", loaded=BOTH) for i in range(50)}
    assert shadow == {route(rollout(mode="shadow", share=100.0), "x", served="3", loaded=BOTH)}
    (only,) = shadow
    assert (only.version, only.arm, only.shadow_version) == ("3", "champion", "4")
    loading = {route(rollout(share=100.0), f"u{i}", served="3", loaded=frozenset({"3"})) for i in range(50)}
    assert {(r.version, r.arm) for r in loading} == {("3", "champion")}


def test_outputs_become_label_and_probability_per_input() -> None:
    import pandas as pd

    frame = pd.DataFrame({"label": [True, False], "probability": [0.9, 0.6]})
    assert rows(frame, 2) == [(True, 0.9), (False, 0.6)]
    with pytest.raises(ValueError, match="1 predictions for 2 inputs"):
        rows(["a"], 2)


@pytest.mark.parametrize("body", [
    {"texts": ["good", "bad"], "subject_ids": ["u1", None]},
    {"dataframe_split": {"columns": ["subject_id", "text"], "data": [["u1", "good"], [None, "bad"]]}},
    {"dataframe_records": [{"text": "good", "subject_id": "u1"}, {"text": "bad"}]},
    {"inputs": {"text": ["good", "bad"], "subject_id": ["u1", None]}},
    {"instances": [{"text": "good", "subject_id": "u1"}, {"text": "bad"}]},
])  # fmt: skip
def test_every_body_form_gives_the_same_inputs(body: dict[str, Any]) -> None:
    assert decode_model_inputs(body, max_batch=10) == (["good", "bad"], ["u1", None])


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"inputs": {"txt": ["a"]}}, 422, "unknown column 'txt'"),
    ({"dataframe_records": [{"text": "a", "id": 1}]}, 422, "unknown column 'id'"),
    ({"dataframe_split": {"columns": ["text"], "data": [["a", "b"]]}}, 422, "needs 1 values"),
    ({"texts": ["a"], "instances": ["b"]}, 422, "exactly one of"),
    ({"texts": ["a", 3]}, 422, "non-empty string"),
    ({"texts": ["a"] * 11}, 413, "at most 10"),
    ({"instances": [{"subject_id": "u1"}]}, 422, "no 'text' column"),
])  # fmt: skip
def test_bad_bodies_are_refused_with_what_is_wrong(body: dict[str, Any], status: int, words: str) -> None:
    with pytest.raises(Rejection) as refused:
        decode_model_inputs(body, max_batch=10)
    assert refused.value.status_code == status and words in refused.value.detail
