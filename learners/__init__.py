"""Pure learning logic: River online learners, label mapping, prequential metrics, drift, snapshots.

Nothing here does I/O; the streams layer feeds events in and ships results out.
"""

import importlib
from typing import Any

# Lazy, so that importing one light module (a settings section, say) does not import River.
_EXPORTS = {
    "AdwinMonitor": "learners.drift",
    "DriftInfo": "learners.drift",
    "DriftSpec": "learners.config",
    "FeaturePrep": "learners.models",
    "LabelSpec": "learners.config",
    "LearnOutcome": "learners.online",
    "LearnerSpec": "learners.config",
    "LearnersConfig": "learners.config",
    "OnlineLearner": "learners.online",
    "PrequentialMetrics": "learners.metrics",
    "SignalRule": "learners.config",
    "SnapshotMeta": "learners.snapshot",
    "TEXT_FEATURE": "learners.models",
    "Target": "learners.labels",
    "build_model": "learners.models",
    "dump_snapshot": "learners.snapshot",
    "load_learners_file": "learners.config",
    "load_snapshot": "learners.snapshot",
    "read_snapshot_meta": "learners.snapshot",
    "resolve_target": "learners.labels",
    "with_text": "learners.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'learners' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
