"""Settings sections of the training worker (light imports: no torch, no MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MlflowConfig(BaseModel):
    """Settings section ``mlflow``: where runs, versions and artifacts go (never ./mlruns)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str | None = Field(default=None, description="default: sqlite:///DATA_DIR/mlflow.db")
    artifact_location: str | None = Field(default=None, description="default: file URI of DATA_DIR/mlartifacts")
    experiment: str = Field(default="learnloop-training", min_length=1, max_length=256)

    def resolved_tracking_uri(self, data_dir: Path) -> str:
        return self.tracking_uri or f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"

    def resolved_artifact_location(self, data_dir: Path) -> str:
        return self.artifact_location or (data_dir / "mlartifacts").resolve().as_uri()


class TrainerConfig(BaseModel):
    """Settings section ``trainer``: job intake, coalescing, data windows and the promotion gate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = "learnloop-trainer"
    # Requests for one model arriving within this many seconds of each other join one job.
    settle_s: float = Field(default=5.0, ge=0)
    poll_s: float = Field(default=1.0, gt=0)
    stale_after_s: float = Field(default=120.0, gt=0, description="a running job without heartbeat is dead")
    max_attempts: int = Field(default=3, ge=1)
    last_n: int = Field(default=5_000, ge=1, description="samples when a request names no window")
    min_samples: int = Field(default=200, ge=2)
    min_per_class: int = Field(default=10, ge=1)
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    margin: float = Field(default=0.01, ge=0, description="F1 a candidate must gain over the champion")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="significance level of McNemar's test")
    quantize: bool = Field(default=False, description="also log an int8 copy with its report against the float model")
    quantize_scheme: Literal["dynamic", "static"] = Field(
        default="dynamic", description="int8 scheme of that copy; static calibrates on the training texts"
    )
    warm_start: bool = Field(default=True, description="train from the champion's weights when its labels match")
    max_eval_samples: int = Field(default=500, ge=50, description="validation and test splits are cut to this")
