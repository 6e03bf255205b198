"""Settings sections owned by the streams layer (composed into workers.settings.Settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class KafkaConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="learnloop.", pattern=r"^[A-Za-z0-9._-]{0,64}$")
    partitions: int = Field(default=3, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)
    client_id: str = "learnloop"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # Tansu holds a JoinGroup for about half the session timeout, so short
    # timeouts keep rebalances near one second on the embedded broker.
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    linger_ms: int = Field(default=5, ge=0)
    max_batch_size: int = Field(default=1_048_576, ge=1024)

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts(cls, v: str) -> str:
        for part in v.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {part.strip()!r}")
        return v

    def client_kwargs(self) -> dict[str, object]:
        """Connection arguments shared by aiokafka producers, consumers and admin clients."""
        kw: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kw


class FeedbackConfig(BaseModel):
    """The feedback consumer: batching, snapshots, dedup and join windows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = "learnloop-feedback"
    # At most this many records per ``getmany``. Keep it above what one fetch brings
    # (max_partition_fetch_bytes / record size: ~11k records of 380 bytes in 4 MiB):
    # aiokafka fetches a partition again only once its buffered records are all taken,
    # so a smaller batch leaves the buffer non-empty and the next fetch starts late.
    batch_max_records: int = Field(default=50_000, ge=1, le=100_000)
    batch_timeout_ms: int = Field(default=50, ge=1, le=60_000)
    # How long the broker may hold a fetch for an idle partition; aiokafka's 500 ms default
    # adds that much latency whenever some assigned partitions are empty.
    fetch_max_wait_ms: int = Field(default=50, ge=0, le=10_000)
    max_partition_fetch_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    # A snapshot (learner state + the offsets it covers + accepted event ids)
    # is written atomically at most this often; a crash replays from the last one.
    snapshot_every_events: int = Field(default=20_000, ge=1)
    snapshot_every_s: float = Field(default=2.0, gt=0)
    # When a poll comes back empty, snapshot what is not yet snapshotted if the last snapshot is at
    # least this old: a burst is durable soon after it ends, and sparse traffic (a few records, then an
    # empty poll) does not write a snapshot per record, which matters for large models.
    snapshot_idle_s: float = Field(default=0.5, ge=0)
    dedup_window: int = Field(default=200_000, ge=1, description="event ids remembered per partition")
    join_ttl_s: int = Field(default=86_400, ge=1, description="how long a prediction waits for its feedback")
    orphan_wait_s: float = Field(default=60.0, ge=0, description="how long feedback waits for its prediction")
    orphan_max: int = Field(default=50_000, ge=0, description="orphans held per partition before the oldest go")
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # While Redis (or the broker) fails, the loop rewinds to its snapshots and retries with back-off;
    # after this long without a successful batch it exits non-zero instead, so a supervisor sees it.
    max_outage_s: float = Field(default=300.0, gt=0, description="seconds of failed retries before the worker exits")
    # Keep every learned sample in the SQL feedback store, for fine-tuning the heavy model.
    store_samples: bool = True


class ServingConfig(BaseModel):
    """Live model versions: how the feedback worker publishes learners and how predictors follow them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The feedback worker publishes a changed learner at most this often, and after every snapshot.
    publish: bool = True
    publish_every_s: float = Field(default=1.0, gt=0)
    # Loop time one capture may spend pickling learners (at least one is captured); the others are
    # captured after the next batch, so many large learners never hold one batch up for long.
    capture_budget_ms: float = Field(default=20.0, gt=0)
    # Versions kept per learner in the store; a superseded one expires after ``superseded_ttl_s``
    # (the latest never expires: a learner without feedback for a week still serves).
    keep_versions: int = Field(default=5, ge=1, le=1000)
    superseded_ttl_s: int = Field(default=600, ge=1)
    # Predictors read the store's latest version this often besides following the announcements,
    # so a publication whose announcement was lost is still served.
    resync_every_s: float = Field(default=10.0, gt=0)
    # Predictions waiting to be logged by a predictor; beyond this they are dropped and counted.
    log_buffer: int = Field(default=100_000, ge=1)
