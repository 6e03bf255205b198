"""Settings section ``rollout`` (``LEARNLOOP_ROLLOUT__...``): the default policy and the controller's knobs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from learners.rollout import RolloutPolicy


class RolloutConfig(BaseModel):
    """How challengers are rolled out, unless the learners file's ``[rollouts.MODEL]`` says otherwise.

    With ``enabled`` off, only models with a ``[rollouts.MODEL]`` section are rolled out; every other
    model keeps today's behaviour (a candidate that passes the offline gate becomes champion at once).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="roll out every model's gated challengers with `policy`")
    policy: RolloutPolicy = Field(default_factory=RolloutPolicy)
    group_id: str = "learnloop-rollouts"
    tick_s: float = Field(default=1.0, gt=0, le=60, description="how often running rollouts are decided")
    prediction_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="how long a prediction waits for its label")

