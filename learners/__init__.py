"""Pure learning logic: River online learners, label mapping, prequential metrics, drift, snapshots.

Nothing here does I/O; the streams layer feeds events in and ships results out.
"""

from learners.config import DriftSpec, LabelSpec, LearnersConfig, LearnerSpec, SignalRule, load_learners_file
from learners.drift import AdwinMonitor, DriftInfo
from learners.labels import Target, resolve_target
from learners.metrics import PrequentialMetrics
from learners.models import TEXT_FEATURE, FeaturePrep, build_model, with_text
from learners.online import LearnOutcome, OnlineLearner
from learners.snapshot import SnapshotMeta, dump_snapshot, load_snapshot, read_snapshot_meta

__all__ = [
    "TEXT_FEATURE",
    "AdwinMonitor",
    "DriftInfo",
    "DriftSpec",
    "FeaturePrep",
    "LabelSpec",
    "LearnOutcome",
    "LearnerSpec",
    "LearnersConfig",
    "OnlineLearner",
    "PrequentialMetrics",
    "SignalRule",
    "SnapshotMeta",
    "Target",
    "build_model",
    "dump_snapshot",
    "load_learners_file",
    "load_snapshot",
    "read_snapshot_meta",
    "resolve_target",
    "with_text",
]
