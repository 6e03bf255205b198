"""Topic names of the contract (DESIGN.md), under a configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

TOPIC_SUFFIXES = (
    "feedback",
    "predictions",
    "conversations",
    "drift",
    "retrain",
    "model-updates",
    "knowledge",
    "deadletter",
    "rollouts",
)


@dataclass(frozen=True)
class Topics:
    """Resolved topic names.

    >>> Topics("learnloop.").feedback
    'learnloop.feedback'
    >>> Topics("acme.").model_updates
    'acme.model-updates'
    """

    prefix: str = "learnloop."

    def name(self, suffix: str) -> str:
        if suffix not in TOPIC_SUFFIXES:
            raise ValueError(f"unknown topic {suffix!r}; known: {', '.join(TOPIC_SUFFIXES)}")
        return f"{self.prefix}{suffix}"

    @property
    def feedback(self) -> str:
        return self.name("feedback")

    @property
    def predictions(self) -> str:
        return self.name("predictions")

    @property
    def conversations(self) -> str:
        return self.name("conversations")

    @property
    def drift(self) -> str:
        return self.name("drift")

    @property
    def retrain(self) -> str:
        return self.name("retrain")

    @property
    def model_updates(self) -> str:
        return self.name("model-updates")

    @property
    def knowledge(self) -> str:
        return self.name("knowledge")

    @property
    def deadletter(self) -> str:
        return self.name("deadletter")

    @property
    def rollouts(self) -> str:
        return self.name("rollouts")

    def all(self) -> list[str]:
        return [self.name(s) for s in TOPIC_SUFFIXES]
