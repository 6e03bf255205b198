"""Burrow's consumer status, evaluated over a sliding window of committed offsets.

Burrow (linkedin/Burrow, ``core/internal/evaluator/caching.go``) stores, per
group and partition, the last ``window`` offset commits, each with its time and
the lag at that moment, and a ring of the partition's recent log-end offsets.
A partition is then, with current lag > 0 (zero lag is always OK):

- STOP   now - last commit > last commit - first commit (commits stopped), unless
         a recent log end was at or below the last committed offset;
- then, only if the lag was never zero in the window:
- REWIND the committed offset went down between two commits;
- STALL  commits keep coming but the offset does not move;
- WARN   the offset moves but the lag never decreases (falling behind);
- OK     otherwise.

One departure: with a single commit in the window, only STOP is evaluated (Burrow's
STALL and WARN checks would hold vacuously, and a sample taken at the moment of
a commit would read as STALL).

A group is the worst of its partitions, where anything worse than ERR counts as
ERR: STOP, STALL and REWIND make the group ERR, WARN makes it WARN.

Sampling instead of reading every commit: the offset-fetch API gives the
committed offset, not when it was committed. So a sample becomes a window
entry when the committed offset changed, and also, unchanged, when a live
consumer owns the partition (a live consumer is committing, or is stuck:
Burrow's STALL). Without one no entries are added, so the window ages and a
partition with lag becomes STOP, as Burrow would see it. "Live" is the worker's
own heartbeat where it publishes one (the feedback worker's progress in Redis),
else the group's membership. Membership alone misleads on Tansu: a consumer
that stops at generation 0 (Tansu's first) sends no LeaveGroup and Tansu never
expires it, so a stopped group there reads STALL rather than STOP (ERR either way).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise


class Status(StrEnum):
    """Burrow's status constants, with their numeric codes (exported as ``*_status_code``)."""

    OK = "OK"
    WARN = "WARN"
    ERR = "ERR"
    STOP = "STOP"
    STALL = "STALL"
    REWIND = "REWIND"

    @property
    def code(self) -> int:
        return _CODES[self]


_CODES = {Status.OK: 1, Status.WARN: 2, Status.ERR: 3, Status.STOP: 4, Status.STALL: 5, Status.REWIND: 6}
PARTITION_STATUSES = (Status.OK, Status.WARN, Status.STOP, Status.STALL, Status.REWIND)
GROUP_STATUSES = (Status.OK, Status.WARN, Status.ERR)


@dataclass(frozen=True)
class Commit:
    offset: int
    time: float  # seconds since the epoch
    lag: int  # log end - offset when the commit was seen (never negative)


def partition_status(commits: list[Commit], log_ends: list[int], current_lag: int, now: float) -> Status:
    """Burrow's ``calculatePartitionStatus``.

    >>> c = [Commit(5, 0.0, 10), Commit(5, 10.0, 12), Commit(5, 20.0, 15)]
    >>> partition_status(c, [15, 17, 20], current_lag=15, now=20.0).value
    'STALL'
    >>> partition_status(c, [15, 17, 20], current_lag=15, now=50.0).value
    'STOP'
    """
    if current_lag <= 0 or not commits:
        return Status.OK
    if _stopped(commits, now) and not _recent_lag_zero(commits, log_ends):
        return Status.STOP
    # Burrow's loops hold vacuously for a single commit (STALL, WARN); one commit is no evidence of either.
    if len(commits) > 1 and all(c.lag != 0 for c in commits):
        if any(b.offset < a.offset for a, b in pairwise(commits)):
            return Status.REWIND
        if all(b.offset == a.offset for a, b in pairwise(commits)):
            return Status.STALL
        if all(b.lag >= a.lag for a, b in pairwise(commits)):
            return Status.WARN
    return Status.OK


def _stopped(commits: list[Commit], now: float) -> bool:
    first, last = commits[0].time, commits[-1].time
    return now - last > last - first


def _recent_lag_zero(commits: list[Commit], log_ends: list[int]) -> bool:
    # A log end at or below the last commit means the consumer was caught up moments ago: new data
    # has just arrived and it has not had the chance to commit past it yet.
    last = commits[-1].offset
    return any(end <= last for end in log_ends)


def group_status(statuses: list[Status]) -> Status:
    """The worst partition status, where STOP, STALL and REWIND count as ERR.

    >>> group_status([Status.OK, Status.WARN]).value, group_status([Status.WARN, Status.STALL]).value
    ('WARN', 'ERR')
    """
    worst = max((s.code for s in statuses), default=Status.OK.code)
    return Status.ERR if worst >= Status.ERR.code else Status.WARN if worst == Status.WARN.code else Status.OK


class CommitWindow:
    """The sliding window of one group's commits on one partition, fed by samples.

    >>> w = CommitWindow(size=3)
    >>> for t in (0.0, 5.0, 10.0):
    ...     w.observe(t, committed=4, log_end=9, live=True)
    >>> w.status(now=10.0).value
    'STALL'
    """

    def __init__(self, size: int = 10) -> None:
        if size < 2:
            raise ValueError("a commit window needs room for at least two commits")
        self.size = size
        self.commits: deque[Commit] = deque(maxlen=size)
        self.log_ends: deque[int] = deque(maxlen=size)
        self.current_lag = 0

    def observe(self, time: float, *, committed: int | None, log_end: int, live: bool) -> None:
        """One sample: the group's committed offset (None: never committed) and the partition's log end."""
        self.log_ends.append(log_end)
        if committed is None:
            self.current_lag = 0  # Burrow has nothing to evaluate for a partition without commits
            return
        self.current_lag = max(0, log_end - committed)
        last = self.commits[-1] if self.commits else None
        if last is not None and time <= last.time:
            return
        if last is None or committed != last.offset or live:
            self.commits.append(Commit(committed, time, self.current_lag))

    @property
    def complete(self) -> float:
        """Fraction of the window filled (Burrow's 'complete')."""
        return len(self.commits) / self.size

    def status(self, now: float) -> Status:
        return partition_status(list(self.commits), list(self.log_ends), self.current_lag, now)
