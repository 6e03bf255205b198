"""River model pipelines: which estimator serves which (task, model) pair, and feature prep.

The registry here is the single source of truth for what a learners file may ask for:
``learners.config`` validates against it, ``build_model`` builds from it.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from collections.abc import Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

from river import base, compose, forest, linear_model, naive_bayes, preprocessing, tree

from schemas.errors import InvalidEvent

if TYPE_CHECKING:
    from learners.config import LearnerSpec

__all__ = [
    "MAX_TEXT_TOKENS",
    "TEXT_FEATURE",
    "FeaturePrep",
    "FeatureValue",
    "ModelName",
    "TaskName",
    "accepted_params",
    "build_estimator",
    "build_model",
    "estimator_class",
    "models_for",
    "supports_weight",
    "with_text",
]

TaskName = Literal["binary", "multiclass", "regression"]
ModelName = Literal[
    "logistic_regression",
    "passive_aggressive",
    "hoeffding_adaptive_tree",
    "adaptive_random_forest",
    "linear_regression",
    "naive_bayes",
]
FeatureValue = float | int | bool | str

#: The key under which an event's free text travels inside a feature dict.
TEXT_FEATURE = "__text__"
MAX_TEXT_TOKENS = 2000

# River's own capabilities decide the table: LogisticRegression and PAClassifier are binary only;
# the trees, the forest and Gaussian naive Bayes handle any number of classes.
_ESTIMATORS: dict[tuple[str, str], type[base.Estimator]] = {
    ("binary", "logistic_regression"): linear_model.LogisticRegression,
    ("binary", "passive_aggressive"): linear_model.PAClassifier,
    ("binary", "hoeffding_adaptive_tree"): tree.HoeffdingAdaptiveTreeClassifier,
    ("binary", "adaptive_random_forest"): forest.ARFClassifier,
    ("binary", "naive_bayes"): naive_bayes.GaussianNB,
    ("multiclass", "hoeffding_adaptive_tree"): tree.HoeffdingAdaptiveTreeClassifier,
    ("multiclass", "adaptive_random_forest"): forest.ARFClassifier,
    ("multiclass", "naive_bayes"): naive_bayes.GaussianNB,
    ("regression", "linear_regression"): linear_model.LinearRegression,
    ("regression", "passive_aggressive"): linear_model.PARegressor,
    ("regression", "hoeffding_adaptive_tree"): tree.HoeffdingAdaptiveTreeRegressor,
    ("regression", "adaptive_random_forest"): forest.ARFRegressor,
}
# Gradient-based linear models need standardised inputs; trees and naive Bayes do not.
_SCALED = frozenset({"logistic_regression", "passive_aggressive", "linear_regression"})
# Models whose randomness is driven by the spec's `seed` (not by a `params` entry).
_SEEDED = frozenset({"hoeffding_adaptive_tree", "adaptive_random_forest"})

_TOKEN = re.compile(r"[a-z0-9']+")


def models_for(task: str) -> tuple[str, ...]:
    """The model names River supports for ``task``, in registry order."""
    return tuple(model for (t, model) in _ESTIMATORS if t == task)


def estimator_class(task: str, model: str) -> type[base.Estimator]:
    """The River class for a (task, model) pair; ``KeyError`` when River has none."""
    return _ESTIMATORS[(task, model)]


def accepted_params(task: str, model: str) -> frozenset[str]:
    """Constructor arguments a learners file may set under ``params`` (``seed`` has its own key)."""
    names = inspect.signature(estimator_class(task, model).__init__).parameters
    return frozenset(names) - {"self", "seed"}


def supports_weight(task: str, model: str) -> bool:
    """Whether the estimator's ``learn_one`` honours a sample weight ``w``.

    True for logistic/linear regression and the Hoeffding adaptive trees. The passive-aggressive
    models and Gaussian naive Bayes take no weight, and ARF accepts ``**kwargs`` but draws its own
    Poisson weights and drops any given one, so those learners ignore feedback weights.
    """
    cls: Any = estimator_class(task, model)
    return "w" in inspect.signature(cls.learn_one).parameters


def build_estimator(task: str, model: str, params: Mapping[str, Any], seed: int) -> base.Estimator:
    """The bare River estimator, without feature prep or scaling."""
    cls: Any = estimator_class(task, model)
    if model in _SEEDED:
        return cls(seed=seed, **params)  # type: ignore[no-any-return]
    return cls(**params)  # type: ignore[no-any-return]


def build_model(spec: LearnerSpec) -> compose.Pipeline:
    """``FeaturePrep | DenseScaler | estimator`` for linear models, ``FeaturePrep | estimator`` else.

    >>> from learners.config import LearnerSpec
    >>> list(build_model(LearnerSpec()).steps)
    ['FeaturePrep', 'DenseScaler', 'LogisticRegression']
    >>> list(build_model(LearnerSpec(model="hoeffding_adaptive_tree")).steps)
    ['FeaturePrep', 'HoeffdingAdaptiveTreeClassifier']
    """
    estimator = build_estimator(spec.task, spec.model, spec.params, spec.seed)
    if spec.model in _SCALED:
        return FeaturePrep() | DenseScaler() | estimator
    return compose.Pipeline(FeaturePrep(), estimator)


def with_text(features: Mapping[str, FeatureValue] | None, text: str | None) -> dict[str, FeatureValue]:
    """One feature dict from an event's ``features`` and ``text`` (text under ``TEXT_FEATURE``).

    >>> with_text({"age": 31}, "Great answer")
    {'age': 31, '__text__': 'Great answer'}
    """
    merged: dict[str, FeatureValue] = dict(features) if features else {}
    if text is not None:
        merged[TEXT_FEATURE] = text
    return merged


class SparseKey(str):
    """A feature name FeaturePrep made for a word (``text:…``) or a one-hot string (``key=value``).

    Equal to (and hashed like) the plain string, so model weights are keyed the same; only its
    type tells the scaler, in one cheap check, that the feature is a sparse indicator.
    """

    __slots__ = ()


class PreparedFeatures(dict[Any, Any]):
    """FeaturePrep's output; ``sparse`` says whether it holds any :class:`SparseKey`.

    DenseScaler splits off the sparse indicators three times per event (predict, learn,
    transform); with the flag it skips that walk and copy when there are none, the common case.
    """

    __slots__ = ("sparse",)

    def __init__(self) -> None:
        super().__init__()
        self.sparse = False


class DenseScaler(base.Transformer):
    """River's ``StandardScaler`` on the numeric features only; word and one-hot features pass as they are.

    A sparse indicator is only ever seen with its present value, so a standard scaler learns a
    zero variance for it and maps it to 0: text would teach a linear model nothing. On numeric
    input this is exactly ``StandardScaler`` (same calls, same order, same numbers).

    >>> s, hi = DenseScaler(), SparseKey("text:hi")
    >>> for x in ({"age": 20.0, hi: 1.0}, {"age": 40.0, hi: 1.0}):
    ...     s.learn_one(x)
    >>> s.transform_one({"age": 40.0, hi: 1.0})
    {'text:hi': 1.0, 'age': 1.0}
    """

    def __init__(self) -> None:
        self.scaler = preprocessing.StandardScaler()

    @staticmethod
    def _dense(x: dict[Any, Any]) -> dict[Any, Any]:
        if type(x) is PreparedFeatures and not x.sparse:
            return x  # not mutated by StandardScaler; len(dense) == len(x) below takes the plain path
        return {k: v for k, v in x.items() if type(k) is not SparseKey}

    def learn_one(self, x: dict[Any, Any]) -> None:
        self.scaler.learn_one(self._dense(x))  # type: ignore[no-untyped-call]

    def transform_one(self, x: dict[Any, Any]) -> dict[Any, Any]:
        dense = self._dense(x)
        if len(dense) == len(x):
            return self.scaler.transform_one(x)  # type: ignore[no-any-return,no-untyped-call]
        sparse = {k: v for k, v in x.items() if type(k) is SparseKey}
        return {**sparse, **self.scaler.transform_one(dense)}  # type: ignore[no-untyped-call]


class FeaturePrep(base.Transformer):
    """Turns event features into the numbers River models read; stateless.

    Numbers pass unchanged (so a numeric-only stream sees exactly what a plain River pipeline
    sees), booleans become 0.0/1.0, strings become one-hot ``"key=value"`` features, and the
    free text under ``TEXT_FEATURE`` becomes lower-cased word counts ``"text:word"``.
    Non-finite numbers are refused: one NaN would poison a linear model's weights for good.

    >>> prep = FeaturePrep()
    >>> prep.transform_one({"age": 31, "vip": True, "plan": "pro", "__text__": "Yes, yes it's fine"})
    {'age': 31, 'vip': 1.0, 'plan=pro': 1.0, 'text:yes': 2.0, "text:it's": 1.0, 'text:fine': 1.0}
    """

    def __init__(self, text_key: str = TEXT_FEATURE, max_tokens: int = MAX_TEXT_TOKENS) -> None:
        self.text_key = text_key
        self.max_tokens = max_tokens

    def transform_one(self, x: dict[Any, Any]) -> dict[Any, Any]:
        out = PreparedFeatures()
        text: object = None
        isfinite = math.isfinite
        for key, value in x.items():
            kind = type(value)
            if kind is float:
                if not isfinite(value):
                    raise InvalidEvent(f"feature {key!r} is not a finite number: {value!r}", reason="bad_feature")
                out[key] = value
            elif kind is bool:
                out[key] = 1.0 if value else 0.0
            elif kind is int:
                out[key] = value
            elif kind is str:
                if key == self.text_key:
                    text = value
                else:
                    out[SparseKey(f"{key}={value}")] = 1.0
                    out.sparse = True
            elif value is None:
                continue
            elif isinstance(value, numbers.Real):  # numpy scalars and other float/int subclasses
                number = float(value)
                if not isfinite(number):
                    raise InvalidEvent(f"feature {key!r} is not a finite number: {value!r}", reason="bad_feature")
                out[key] = number
            else:
                raise InvalidEvent(
                    f"feature {key!r} has unsupported type {kind.__name__} (number, bool or string)",
                    reason="bad_feature",
                )
        if text is not None:
            assert isinstance(text, str)
            out.sparse = True  # set even when no token is found: the flag only has to be conservative
            for match in islice(_TOKEN.finditer(text.lower()), self.max_tokens):
                token = SparseKey(f"text:{match.group()}")
                out[token] = out.get(token, 0.0) + 1.0
        return out
