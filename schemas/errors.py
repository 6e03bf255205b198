"""The project's exception tree.

It lives at the bottom of the import graph (``schemas`` imports nothing of
ours), so every layer can raise and catch the same types.

    LearnloopError
    ├── ConfigError            a bad setting or learners-file value (one readable line)
    ├── InvalidEvent           an event that fails decoding or validation (dead-lettered)
    │   ├── UnknownLearner     strict mode and a learner nobody declared
    │   └── LabelError         feedback whose rating/signal cannot become a label
    ├── SnapshotError          a learner snapshot that cannot be loaded
    │   └── SnapshotSignatureError   ... because its HMAC does not verify
    ├── BackPressureError      a sink gave up after bounded retries; the caller must pause
    ├── StoreUnavailable       Redis/SQL/graph unreachable: pause, rewind, retry; lose nothing
    └── GraphError             the knowledge graph refused a request (not an outage)
        ├── ReadOnlyViolation  a query given as read-only contains a write clause or several statements
        └── DuplicateEvents    a batch holds events the graph already has: filter with known_events, fold again
"""

from __future__ import annotations


class LearnloopError(Exception):
    """Root of every error learnloop raises on purpose."""


class ConfigError(LearnloopError):
    """A setting or learners-file value is wrong; the message names the key."""


class InvalidEvent(LearnloopError):
    """An event that cannot be processed; ``reason`` is a short machine-friendly tag."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class UnknownLearner(InvalidEvent):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown learner {name!r} (learners file is strict)", reason="unknown_learner")
        self.name = name


class LabelError(InvalidEvent):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="unmappable_label")


class SnapshotError(LearnloopError):
    """A snapshot is corrupt, from an incompatible version, or otherwise unusable."""


class SnapshotSignatureError(SnapshotError):
    """A snapshot's HMAC does not match: it was tampered with or signed with another key."""


class BackPressureError(LearnloopError):
    """A downstream store refused writes after bounded retries; stop consuming, lose nothing."""


class StoreUnavailable(LearnloopError):
    """A state store could not be reached; the worker rewinds to its last snapshot and retries."""


class GraphError(LearnloopError):
    """The knowledge graph refused a request for a reason that retrying will not fix."""


class ReadOnlyViolation(GraphError):
    """A query offered as read-only writes, calls a procedure not known to be read-only, or chains statements."""


class DuplicateEvents(GraphError):
    """Some (not all) of a batch's events are already in the graph, e.g. written by a concurrent writer.

    A folded batch cannot be split back per event, so nothing was written: the
    caller drops the extractions of ``event_ids`` (``known_events``), folds again
    and retries.
    """

    def __init__(self, event_ids: frozenset[str]) -> None:
        shown = ", ".join(sorted(event_ids)[:5]) + (" ..." if len(event_ids) > 5 else "")
        super().__init__(f"{len(event_ids)} event(s) of this batch are already in the graph: {shown}")
        self.event_ids = event_ids
