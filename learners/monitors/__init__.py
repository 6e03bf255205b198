"""Drift before the labels arrive: input drift, prediction drift and a label-free performance estimate.

Pure: every monitor is fed values and returns ``DriftSignal`` objects; nothing here does I/O.
"""

from learners.monitors.base import DriftKind, DriftSignal, Monitor, psi
from learners.monitors.estimate import PerformanceEstimator
from learners.monitors.features import CategoricalDriftDetector, NumericDriftDetector, TextDriftDetector
from learners.monitors.inputs import InputDriftMonitor
from learners.monitors.prediction import PredictionDriftMonitor
from learners.monitors.specs import InputDriftSpec, PerformanceEstimateSpec, PredictionDriftSpec

__all__ = [
    "CategoricalDriftDetector",
    "DriftKind",
    "DriftSignal",
    "InputDriftMonitor",
    "InputDriftSpec",
    "Monitor",
    "NumericDriftDetector",
    "PerformanceEstimateSpec",
    "PerformanceEstimator",
    "PredictionDriftMonitor",
    "PredictionDriftSpec",
    "TextDriftDetector",
    "psi",
]
