"""The events learnloop reads and writes, one frozen model per event type.

Nested parts (``WindowStats``, ``DataWindow``, ``Lineage``, ``EntityRef``,
``RelationRef``) are not events: they have no envelope and travel inside one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from schemas.envelope import (
    ALIAS_PATTERN,
    MAX_COMMENT,
    MAX_NAME,
    MAX_STR_VALUE,
    MAX_TEXT,
    Count,
    Envelope,
    Features,
    Finite,
    Ident,
    Label,
    Metrics,
    Name,
    Probability,
    Tag,
    Text,
    Timestamp,
    Uuid,
    WireModel,
    filled_in_python,
    utc_now,
)

MAX_URI = 2048
"""Characters in a model artifact URI."""

KNOWN_SIGNALS = frozenset({"click", "dwell_ms", "copy", "thumbs_up", "thumbs_down", "regenerate", "skip", "share"})
"""Implicit signals with a conventional meaning; the set is open, learners map any tag they declare."""


def _any_present(*fields: str) -> dict[str, Any]:
    """JSON Schema for "at least one of these fields is present and not null"."""
    return {"anyOf": [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in fields]}


def _needs_when_present(field: str, needed: str) -> dict[str, Any]:
    """JSON Schema for "when ``field`` is present and not null, ``needed`` must be too".

    ``dependentRequired`` alone would also refuse ``"field": null``, which readers take as absent.
    """
    present: dict[str, Any] = {"required": [field], "properties": {field: {"not": {"type": "null"}}}}
    return {"if": present, "then": {"required": [needed], "properties": {needed: {"not": {"type": "null"}}}}}


def _rule(kind: str, message: str) -> PydanticCustomError:
    # A custom error keeps the message free of pydantic's "Value error, " prefix.
    return PydanticCustomError(kind, message)


class FeedbackEvent(Envelope):
    """What a user or an application says about an example or an earlier prediction.

    The input is inline ``features`` and/or ``text``, or a ``prediction_id`` whose
    features (stored at prediction time) the feedback agent joins in. The target
    is a ``label``, an explicit ``rating`` or an implicit ``signal`` that the
    learner's config maps to a label and a weight. ``channel`` defaults to
    ``"implicit"`` when only a signal is given, otherwise ``"explicit"``.

    >>> from schemas import FeedbackEvent, parse_event
    >>> ev = FeedbackEvent(source="shop-web", learner="ctr", features={"price": 9.5, "mobile": True}, label=1)
    >>> ev.channel, ev.needs_join
    ('explicit', False)
    >>> parse_event(ev.to_json(), FeedbackEvent) == ev
    True
    >>> click = FeedbackEvent(source="shop-web", learner="ctr", prediction_id="p-42", signal="click")
    >>> click.channel, click.needs_join
    ('implicit', True)
    """

    # The cross-field rules, for producers that validate against the exported JSON Schema.
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                _any_present("label", "rating", "signal"),
                _any_present("features", "text", "prediction_id"),
                _needs_when_present("signal_value", "signal"),
            ]
        }
    )

    SCHEMA_ID: ClassVar[str] = "feedback/1"
    schema_: Literal["feedback/1"] = filled_in_python(alias="schema")
    learner: Name
    subject_id: Ident | None = None
    features: Features | None = None
    text: Text | None = None
    prediction_id: Ident | None = None
    label: Label | None = None
    rating: Finite | None = None
    signal: Tag | None = None
    signal_value: Finite | None = None
    channel: Literal["explicit", "implicit"] = Field(
        default="explicit", description='"implicit" when only a signal is given, else "explicit"'
    )
    comment: Annotated[str, StringConstraints(max_length=MAX_COMMENT)] | None = None

    @model_validator(mode="after")
    def _check_target_and_input(self) -> Self:
        if self.label is None and self.rating is None:
            if self.signal is None:
                raise _rule("feedback_target", "feedback needs a label, a rating or a signal")
            if "channel" not in self.model_fields_set:
                # The model is frozen; during validation is the one moment a derived
                # default may be written. Doing it here rather than in a mode="before"
                # validator keeps JSON validation entirely in pydantic-core (1.5x faster).
                object.__setattr__(self, "channel", "implicit")
        if self.features is None and self.text is None and self.prediction_id is None:
            raise _rule("feedback_input", "feedback needs features, text or a prediction_id")
        if self.signal_value is not None and self.signal is None:
            raise _rule("feedback_signal", "signal_value needs a signal")
        return self

    @property
    def needs_join(self) -> bool:
        """True when the features must come from the prediction this feedback refers to."""
        return self.prediction_id is not None and self.features is None and self.text is None


class PredictionEvent(Envelope):
    """A prediction an application served, kept so that later feedback can be joined to it.

    >>> from schemas import PredictionEvent, parse_event
    >>> ev = PredictionEvent(source="shop-web", prediction_id="p-42", learner="ctr",
    ...                      features={"price": 9.5}, prediction=True, probability=0.83, model_version="7")
    >>> parse_event(ev.to_dict(), PredictionEvent) == ev
    True
    """

    model_config = ConfigDict(json_schema_extra=_any_present("features", "text"))

    SCHEMA_ID: ClassVar[str] = "prediction/1"
    schema_: Literal["prediction/1"] = filled_in_python(alias="schema")
    prediction_id: Ident
    learner: Name
    features: Features | None = None
    text: Text | None = None
    prediction: Label | None = None
    probability: Probability | None = None
    model_version: Ident
    # Routing, for the rollout controller (all optional: a plain online prediction sets none).
    model: Name | None = Field(default=None, description="the registered model that answered (fine-tuned serving)")
    subject_id: Ident | None = None
    rollout_id: Ident | None = Field(default=None, description="the rollout the request was routed under")
    arm: Literal["champion", "challenger"] | None = None
    shadow_of: Ident | None = Field(
        default=None, description="on a shadow copy: the prediction_id of the answered prediction it mirrors"
    )
    latency_ms: Annotated[Finite, Field(ge=0)] | None = None
    failed: StrictBool = Field(default=False, description="the version failed to predict (prediction is null)")

    @model_validator(mode="after")
    def _check_input(self) -> Self:
        if self.features is None and self.text is None:
            raise _rule("prediction_input", "prediction needs features or text")
        return self


class ConversationEvent(Envelope):
    """One turn of a conversation, the input of knowledge extraction.

    >>> from schemas import ConversationEvent, parse_event
    >>> ev = ConversationEvent(source="chat", conversation_id="c-1", turn=0, role="user",
    ...                        text="Ada Lovelace worked with Charles Babbage in London.")
    >>> parse_event(ev.to_json()) == ev
    True
    """

    SCHEMA_ID: ClassVar[str] = "conversation/1"
    schema_: Literal["conversation/1"] = filled_in_python(alias="schema")
    conversation_id: Ident
    turn: Count
    role: Literal["user", "assistant", "system"]
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]
    user_id: Ident | None = None


class WindowStats(WireModel):
    """Size and mean of the monitored metric in one window of a drift detector."""

    n: Count
    mean: Finite


class DriftEvent(Envelope):
    """A drift detector fired on a learner's metric stream.

    >>> from datetime import datetime, timezone
    >>> from schemas import DriftEvent, WindowStats, parse_event
    >>> ev = DriftEvent(source="feedback-agent", learner="ctr", detector="adwin", metric="error",
    ...                 n_seen=12000, before=WindowStats(n=8000, mean=0.12),
    ...                 after=WindowStats(n=400, mean=0.31),
    ...                 detected_at=datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc))
    >>> parse_event(ev.to_json(), DriftEvent) == ev
    True
    """

    SCHEMA_ID: ClassVar[str] = "drift/1"
    schema_: Literal["drift/1"] = filled_in_python(alias="schema")
    learner: Name
    detector: Ident
    metric: Ident
    n_seen: Count
    before: WindowStats
    after: WindowStats
    detected_at: Timestamp
    delta: Finite | None = None


class DriftEventV2(Envelope):
    """A drift detector fired on a learner's error, inputs, served predictions or estimated performance.

    ``kind`` says what moved; ``feature`` names the input (``input`` drift) or the served quantity
    (``prediction`` drift: ``prediction`` or ``score``); ``model_version`` the version whose
    predictions moved. ``before`` and ``after`` are the detector's statistics for the reference and
    the window that moved (``n``, ``mean``, a category's ``share:<name>``, ``accuracy``...);
    ``statistic`` is the value that crossed ``threshold``. Readers of drift/1 keep reading drift/1:
    the error drift of ADWIN is still published as drift/1.

    >>> from datetime import datetime, timezone
    >>> from schemas import DriftEventV2, parse_event
    >>> ev = DriftEventV2(source="feedback-agent", learner="ctr", kind="input", detector="psi", feature="age",
    ...                   n_seen=12000, statistic=0.41, threshold=0.25, before={"n": 500, "mean": 40.2},
    ...                   after={"n": 500, "mean": 51.0}, detected_at=datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc))
    >>> parse_event(ev.to_json()) == ev
    True
    """

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"required": ["kind"], "properties": {"kind": {"const": "input"}}},
            "then": {"required": ["feature"], "properties": {"feature": {"not": {"type": "null"}}}},
        }
    )

    SCHEMA_ID: ClassVar[str] = "drift/2"
    schema_: Literal["drift/2"] = filled_in_python(alias="schema")
    learner: Name
    kind: Literal["error", "input", "prediction", "estimated_performance"]
    detector: Ident
    feature: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)] | None = None
    model_version: Ident | None = None
    metric: Ident | None = None
    n_seen: Count
    statistic: Finite | None = None
    threshold: Finite | None = None
    before: Metrics
    after: Metrics
    detected_at: Timestamp
    delta: Finite | None = None

    @model_validator(mode="after")
    def _input_names_its_feature(self) -> Self:
        if self.kind == "input" and self.feature is None:
            raise _rule("drift_feature", "an input drift names the feature that moved")
        return self


class DataWindow(WireModel):
    """Which data a training run uses: a time range, the last ``n`` samples, or both (empty: all)."""

    start: Timestamp | None = None
    end: Timestamp | None = None
    last_n: Annotated[StrictInt, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _check_order(self) -> Self:
        if self.start is not None and self.end is not None and self.start > self.end:
            raise _rule("window_order", "window start must not be after its end")
        return self


class RetrainRequest(Envelope):
    """Ask the training worker to fine-tune a model.

    >>> from schemas import DataWindow, RetrainRequest, parse_event
    >>> ev = RetrainRequest(source="feedback-agent", model="ctr-text", reason="drift", learner="ctr",
    ...                     window=DataWindow(last_n=50000))
    >>> parse_event(ev.to_json(), RetrainRequest) == ev
    True
    """

    SCHEMA_ID: ClassVar[str] = "retrain/1"
    schema_: Literal["retrain/1"] = filled_in_python(alias="schema")
    request_id: Uuid = filled_in_python()
    model: Name
    reason: Literal["drift", "schedule", "manual", "volume"]
    learner: Name | None = None
    drift_event_id: Uuid | None = None
    window: DataWindow = Field(default_factory=DataWindow)

    # Like event_id: a new id for a request made in Python, required on the wire.
    FILLED_IN: ClassVar[dict[str, Callable[[], object]]] = {**Envelope.FILLED_IN, "request_id": uuid.uuid4}


class Lineage(WireModel):
    """Where a model version comes from."""

    parent_version: Ident | None = None
    data_window: DataWindow | None = None
    n_samples: Count | None = None
    code_version: Ident | None = None


class ModelUpdate(Envelope):
    """A new model version is available; serving applications reload from ``uri``.

    >>> from schemas import ModelUpdate, parse_event
    >>> ev = ModelUpdate(source="trainer", model="ctr-text", version="8", kind="fine-tuned",
    ...                  uri="models:/ctr-text/8", alias="challenger", metrics={"f1": 0.91})
    >>> parse_event(ev.to_json(), ModelUpdate) == ev
    True
    """

    SCHEMA_ID: ClassVar[str] = "model-update/1"
    schema_: Literal["model-update/1"] = filled_in_python(alias="schema")
    model: Name
    version: Ident
    kind: Literal["online-snapshot", "fine-tuned"]
    uri: Annotated[str, StringConstraints(min_length=1, max_length=MAX_URI)]
    alias: Annotated[str, StringConstraints(pattern=ALIAS_PATTERN)]
    metrics: Metrics = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    rollout: StrictBool = Field(
        default=False, description="a challenger that passed the offline gate: the rollout controller rolls it out"
    )


ROLLOUT_STATES = ("running", "paused", "promoted", "rolled_back", "aborted", "inconclusive")
"""A rollout's states; the first two route traffic (paused: champion only), the others are final."""


class RolloutEvent(Envelope):
    """The routing state of a model's rollout, on ``learnloop.rollouts`` keyed by model.

    Serving processes follow the latest event per model: while ``running`` they answer each
    request with ``learners.rollout.assign(subject_id or prediction_id, share, salt=rollout_id)``
    (shadow: the champion answers, the challenger predicts a copy); otherwise the champion answers.

    >>> from schemas import RolloutEvent, parse_event
    >>> ev = RolloutEvent(source="rollouts", model="sea-text", rollout_id="r1", state="running", mode="canary",
    ...                   step=0, share=5.0, champion_version="3", challenger_version="4", reason="started")
    >>> parse_event(ev.to_json(), RolloutEvent) == ev
    True
    """

    SCHEMA_ID: ClassVar[str] = "rollout/1"
    schema_: Literal["rollout/1"] = filled_in_python(alias="schema")
    model: Name
    rollout_id: Ident
    state: Literal["running", "paused", "promoted", "rolled_back", "aborted", "inconclusive"]
    mode: Literal["shadow", "canary", "ab"]
    step: Count
    share: Annotated[Finite, Field(ge=0.0, le=100.0)]
    champion_version: Ident | None = None
    challenger_version: Ident
    reason: Annotated[str, StringConstraints(max_length=MAX_COMMENT)] = ""
    decided_at: Timestamp = filled_in_python()
    statistics: Metrics = Field(default_factory=dict)

    # Like event_id: the current time for a decision made in Python, required on the wire.
    FILLED_IN: ClassVar[dict[str, Callable[[], object]]] = {**Envelope.FILLED_IN, "decided_at": utc_now}


EntityText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STR_VALUE)]


class EntityRef(WireModel):
    """An entity written to the graph: its stable ``key``, surface ``name`` and type ``label``."""

    key: EntityText
    name: EntityText
    label: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]


class RelationRef(WireModel):
    """A relation between two entity keys, with the extractor's confidence."""

    subject: EntityText
    predicate: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
    object: EntityText
    confidence: Probability
    validated: StrictBool


class KnowledgeUpdate(Envelope):
    """What knowledge extraction wrote to the graph for one conversation event.

    >>> import uuid
    >>> from schemas import EntityRef, KnowledgeUpdate, parse_event
    >>> ada = EntityRef(key="person:ada lovelace", name="Ada Lovelace", label="PERSON")
    >>> ev = KnowledgeUpdate(source="conversation-agent", conversation_id="c-1",
    ...                      source_event_id=uuid.uuid4(), entities=[ada])
    >>> parse_event(ev.to_json(), KnowledgeUpdate) == ev
    True
    """

    SCHEMA_ID: ClassVar[str] = "knowledge/1"
    schema_: Literal["knowledge/1"] = filled_in_python(alias="schema")
    conversation_id: Ident
    source_event_id: Uuid
    entities: list[EntityRef] = Field(default_factory=list)
    relations: list[RelationRef] = Field(default_factory=list)
