"""The learners-file sections that switch monitors on: ``[learners.X.input_drift]``,
``[learners.X.prediction_drift]`` and ``[learners.X.performance_estimate]``. Absent means off."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from learners.monitors.estimate import PerformanceEstimator
from learners.monitors.inputs import InputDriftMonitor
from learners.monitors.prediction import PredictionDriftMonitor

__all__ = ["InputDriftSpec", "PerformanceEstimateSpec", "PredictionDriftSpec"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Windowed(_Frozen):
    window: int = Field(default=500, ge=20, le=1_000_000, description="values per compared window")
    bins: int = Field(default=10, ge=2, le=100, description="quantile bins of a numeric reference")
    threshold: float = Field(default=0.25, gt=0, description="population stability index that is a drift")

    @model_validator(mode="after")
    def _window_fills_bins(self) -> Self:
        if self.window < 2 * self.bins:
            raise ValueError(f"window ({self.window}) must hold at least two values per bin ({self.bins} bins)")
        return self


class InputDriftSpec(_Windowed):
    """Which features to watch and how.

    >>> InputDriftSpec(features=["age"]).build().features
    ('age',)
    """

    features: tuple[str, ...] = Field(default=(), description="features to watch; empty: the top by volume")
    max_features: int = Field(default=20, ge=1, le=1000)
    max_categories: int = Field(default=20, ge=1, le=1000)
    text: bool = True
    vocab_size: int = Field(default=5000, ge=1, le=1_000_000)
    oov_threshold: float = Field(default=0.1, gt=0, lt=1)

    def build(self) -> InputDriftMonitor:
        return InputDriftMonitor(
            features=self.features,
            max_features=self.max_features,
            window=self.window,
            bins=self.bins,
            threshold=self.threshold,
            max_categories=self.max_categories,
            text=self.text,
            vocab_size=self.vocab_size,
            oov_threshold=self.oov_threshold,
        )


class PredictionDriftSpec(_Windowed):
    """Served predictions and scores, per model version.

    >>> PredictionDriftSpec(window=100).build().window
    100
    """

    max_versions: int = Field(default=4, ge=1, le=100)

    def build(self) -> PredictionDriftMonitor:
        return PredictionDriftMonitor(
            window=self.window, bins=self.bins, threshold=self.threshold, max_versions=self.max_versions
        )


class PerformanceEstimateSpec(_Frozen):
    """The label-free accuracy estimate of a classifier.

    >>> PerformanceEstimateSpec().build().chunk
    500
    """

    chunk: int = Field(default=500, ge=10, le=1_000_000)
    max_drop: float = Field(default=0.05, gt=0, lt=1, description="fall of expected accuracy that is a drift")
    calibration_bins: int = Field(default=10, ge=1, le=100)
    min_labelled: float = Field(default=0.8, gt=0, le=1)
    max_pending: int = Field(default=100_000, ge=1)

    def build(self) -> PerformanceEstimator:
        return PerformanceEstimator(
            chunk=self.chunk,
            max_drop=self.max_drop,
            calibration_bins=self.calibration_bins,
            min_labelled=self.min_labelled,
            max_pending=self.max_pending,
        )
