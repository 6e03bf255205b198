"""The learners file: defaults, fallback rules, and one readable error line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from learners.config import DEFAULT_SIGNALS, LearnersConfig, LearnerSpec, load_learners_file
from learners.models import build_model
from schemas.errors import ConfigError, UnknownLearner

GOOD = """
strict = false

[learners.default]
model = "passive_aggressive"

[learners.sea]
task = "binary"
model = "hoeffding_adaptive_tree"
retrain_model = "sea-classifier"
rolling_window = 500
seed = 7

[learners.sea.params]
grace_period = 100
split_criterion = "gini"

[learners.sea.drift]
delta = 0.01
cooldown = 200
grace = 50

[learners.sea.labels]
rating_threshold = 3.5
dwell_ms_threshold = 4000

[learners.sea.labels.signals.click]
label = true
weight = 0.25

[learners.prices]
task = "regression"
"""


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_text(text: str) -> LearnersConfig:
    Path("learners.toml").write_text(text)
    return load_learners_file("learners.toml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_text(text)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("learners.toml: ")
    return message


def test_a_full_file_loads(in_tmp: Path) -> None:
    config = load_text(GOOD)
    sea = config.resolve("sea")
    assert (sea.task, sea.model, sea.retrain_model, sea.rolling_window, sea.seed) == (
        "binary", "hoeffding_adaptive_tree", "sea-classifier", 500, 7,
    )  # fmt: skip
    assert sea.params == {"grace_period": 100, "split_criterion": "gini"}
    assert (sea.drift.delta, sea.drift.cooldown, sea.drift.grace) == (0.01, 200, 50)
    assert (sea.labels.rating_threshold, sea.labels.dwell_ms_threshold) == (3.5, 4000)
    assert sea.labels.signals["click"].weight == 0.25
    assert sea.labels.signals["thumbs_up"] == DEFAULT_SIGNALS["thumbs_up"]  # merged over the defaults
    assert config.resolve("prices").model == "linear_regression"  # the task's usual model
    assert config.declared == ("default", "sea", "prices")
    estimator = build_model(sea)["HoeffdingAdaptiveTreeClassifier"]
    assert (estimator.grace_period, estimator.split_criterion, estimator.seed) == (100, "gini", 7)


def test_undeclared_learners_fall_back_to_default(in_tmp: Path) -> None:
    config = load_text(GOOD)
    assert config.resolve("anything").model == "passive_aggressive"


def test_without_a_default_entry_the_builtin_spec_serves(in_tmp: Path) -> None:
    config = load_text('[learners.sea]\nmodel = "naive_bayes"\n')
    assert config.resolve("other") == LearnerSpec()


def test_strict_refuses_undeclared_learners(in_tmp: Path) -> None:
    config = load_text('strict = true\n[learners.sea]\n[learners.default]\nmodel = "naive_bayes"\n')
    assert config.resolve("sea") == LearnerSpec()
    with pytest.raises(UnknownLearner) as excinfo:
        config.resolve("ghost")
    assert excinfo.value.name == "ghost" and excinfo.value.reason == "unknown_learner"


def test_missing_file_means_builtin_default(in_tmp: Path) -> None:
    assert load_learners_file("nope.toml") == LearnersConfig()
    assert load_learners_file(None).resolve("x") == LearnerSpec()
    with pytest.raises(ConfigError, match=r"^learners file not found: nope.toml$"):
        load_learners_file("nope.toml", required=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[learners.sea.drift]\ndelta = -1\n",
            "learners.toml: learners.sea.drift.delta: Input should be greater than 0 (got -1)",
        ),
        (
            "[learners.sea.drift]\ncooldown = -5\n",
            "learners.toml: learners.sea.drift.cooldown: Input should be greater than or equal to 0 (got -5)",
        ),
        (
            '[learners.sea]\nmodel = "xgboost"\n',
            "learners.toml: learners.sea.model: Input should be 'logistic_regression', 'passive_aggressive', "
            "'hoeffding_adaptive_tree', 'adaptive_random_forest', 'linear_regression' or 'naive_bayes' "
            "(got 'xgboost')",
        ),
        (
            '[learners.sea]\ntask = "regression"\nmodel = "logistic_regression"\n',
            "learners.toml: learners.sea.model: logistic_regression does not fit task 'regression'; choose one "
            "of linear_regression, passive_aggressive, hoeffding_adaptive_tree, adaptive_random_forest "
            "(got 'logistic_regression')",
        ),
        (
            '[learners.sea]\ntask = "multiclass"\nmodel = "logistic_regression"\n',
            "learners.toml: learners.sea.model: logistic_regression does not fit task 'multiclass'; choose one "
            "of hoeffding_adaptive_tree, adaptive_random_forest, naive_bayes (got 'logistic_regression')",
        ),
        (
            "[learners.sea]\nspeed = 3\n",
            "learners.toml: learners.sea.speed: Extra inputs are not permitted (got 3)",
        ),
        (
            "[learners.sea.labels.signals.click]\nweight = 0.5\n",
            "learners.toml: learners.sea.labels.signals.click.label: Field required",
        ),
        (
            "[learners.sea.labels.signals.dwell_ms]\nlabel = true\n",
            "learners.toml: learners.sea.labels.signals: dwell_ms is mapped by dwell_ms_threshold/dwell_ms_weight, "
            "not by a signal rule",
        ),
        (
            '["learners"."bad name"]\n',
            "learners.toml: learners: learner name 'bad name' must be non-empty and contain no whitespace",
        ),
    ],
)
def test_errors_are_one_line_naming_file_and_key(in_tmp: Path, text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_unknown_param_is_named(in_tmp: Path) -> None:
    message = error_of("[learners.sea.params]\nl3 = 0.1\n")
    assert message.startswith("learners.toml: learners.sea.params: unknown parameter 'l3' for River LogisticRegression")
    assert "l2" in message  # the accepted ones are listed


def test_params_river_rejects_are_reported(in_tmp: Path) -> None:
    message = error_of('[learners.sea.params]\noptimizer = "adam"\n')
    assert message.startswith("learners.toml: learners.sea.params: River LogisticRegression refused these params")


def test_seed_belongs_to_the_learner_not_params(in_tmp: Path) -> None:
    message = error_of('[learners.sea]\nmodel = "adaptive_random_forest"\n[learners.sea.params]\nseed = 1\n')
    assert "seed is set by the learner's own 'seed' key" in message


def test_bad_toml_names_line_and_column(in_tmp: Path) -> None:
    message = error_of("[learners.sea]\nmodel = \ntask = 'binary'\n")
    assert message.startswith("learners.toml: invalid TOML: ")
    assert "(at line 2, column" in message


def test_several_errors_still_fit_one_line(in_tmp: Path) -> None:
    message = error_of("[learners.sea.drift]\ndelta = 2\ngrace = -1\n")
    assert message == "learners.toml: learners.sea.drift.delta: Input should be less than 1 (got 2) (and 1 more)"


def test_unreadable_file_is_a_config_error(in_tmp: Path) -> None:
    Path("learners.toml").write_bytes(b"\xff\xfe[learners]")
    with pytest.raises(ConfigError, match=r"^learners.toml: invalid TOML: not UTF-8"):
        load_learners_file("learners.toml")
    Path("dir.toml").mkdir()
    with pytest.raises(ConfigError, match=r"^dir.toml: cannot read learners file"):
        load_learners_file("dir.toml")


def test_from_mapping_validates_the_same_way() -> None:
    config = LearnersConfig.from_mapping({"strict": True, "learners": {"a": {"task": "multiclass"}}})
    assert config.resolve("a").model == "hoeffding_adaptive_tree"
    with pytest.raises(ConfigError, match=r"^learners config: learners.a.rolling_window: Input should be greater"):
        LearnersConfig.from_mapping({"learners": {"a": {"rolling_window": 0}}})


def test_specs_are_frozen() -> None:
    spec = LearnerSpec()
    with pytest.raises(ValueError, match="frozen"):
        spec.seed = 1  # type: ignore[misc]


def test_the_example_in_the_module_docs_loads(in_tmp: Path) -> None:
    import learners.config

    doc = learners.config.__doc__ or ""
    example = doc.split("A learners file is TOML::", 1)[1].split("Every mistake", 1)[0]
    config = load_text("\n".join(line.removeprefix("    ") for line in example.splitlines()))
    assert config.resolve("sea").params == {"grace_period": 100}
    assert config.resolve("sea").labels.signals["click"].weight == 0.4


def test_a_rollouts_section_is_a_policy_over_the_settings_defaults(in_tmp: Path) -> None:
    from learners.rollout import RolloutPolicy

    config = load_text('[rollouts.sea-text]\nmode = "ab"\nmin_labels = 50\n[rollouts.sea-text.guardrails]\n'
                       "min_requests = 10\n")
    default = RolloutPolicy(min_labels=500, max_step_duration_s=60, guardrails={"max_p95_latency_ratio": 3.0})
    policy = config.rollout_policy("sea-text", default)
    assert policy is not None
    assert (policy.mode, policy.steps, policy.min_labels, policy.max_step_duration_s) == ("ab", [50.0], 50, 60)
    assert (policy.guardrails.min_requests, policy.guardrails.max_p95_latency_ratio) == (10, 3.0)
    assert config.rollout_policy("other", default) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[rollouts.m]\nsteps = [50, 25]\n",
         "learners.toml: rollouts.m.steps: steps must rise, got [50.0, 25.0] (got [50, 25])"),
        ('[rollouts.m]\nmetric = "auc"\n', "learners.toml: rollouts.m.metric: Input should be 'accuracy', 'f1' or "
                                           "'log_loss' (got 'auc')"),
        ("[rollouts.m]\nwarmup = 1\n", "learners.toml: rollouts.m.warmup: Extra inputs are not permitted (got 1)"),
    ],
)
def test_a_bad_rollouts_section_is_one_line(in_tmp: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(text)
    assert str(caught.value) == expected
