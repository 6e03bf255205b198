"""Settings section ``lag``: which groups the lag monitor watches, how often, and how much it remembers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LagConfig(BaseModel):
    """The lag monitor (``learnloop lag``) and the lag exporter (``learnloop worker lag-exporter``).

    >>> LagConfig().window, LagConfig().metrics_port
    (10, 9108)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Empty: every learnloop group (feedback, conversations, trainer) and every group the broker lists.
    groups: list[str] = Field(default_factory=list)
    sample_every_s: float = Field(default=5.0, gt=0, description="exporter: seconds between samples")
    # kafka-lag-exporter's lookup table: (time, log-end offset) points kept per partition for time lag.
    history: int = Field(default=60, ge=2, le=100_000, description="samples of log-end offset per partition")
    # Burrow's storage 'intervals': the sliding window of committed offsets each status is evaluated over.
    window: int = Field(default=10, ge=2, le=10_000, description="committed-offset samples per partition")
    metrics_host: str = Field(default="127.0.0.1", description="exporter: address the /metrics server binds")
    metrics_port: int = Field(default=9108, ge=0, le=65_535, description="exporter: 0 picks a free port")
    # A worker that publishes its progress to Redis (the feedback worker does, every 0.5 s while its
    # loop runs) is live while its latest update is younger than this; its group membership is not
    # consulted (on Tansu a consumer that stops at generation 0 never leaves its group).
    heartbeat_timeout_s: float = Field(default=15.0, gt=0)
    # A learner whose model is older than this (against the newest event produced) is reported stale.
    freshness_bound_s: float = Field(default=300.0, gt=0)
    # The one-shot `learnloop lag` samples this many times, this far apart, to evaluate statuses.
    cli_samples: int = Field(default=3, ge=1, le=100)
    cli_interval_s: float = Field(default=1.0, ge=0, le=60)
    # How long one probe (a fetch that reads the high watermark) may wait for the broker.
    fetch_timeout_ms: int = Field(default=5_000, ge=100, le=120_000)
    # Bytes a probe may read per partition; Kafka returns at least one whole batch regardless.
    fetch_max_bytes: int = Field(default=1_048_576, ge=1024)
