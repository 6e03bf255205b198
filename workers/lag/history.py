"""Time lag: how many seconds a consumer is behind, two ways.

*Interpolated* (the exporter): kafka-lag-exporter's method. Keep a bounded table
of (time, log-end offset) samples per partition; the time at which the log end
was equal to a group's committed offset is read off the table by linear
interpolation (extrapolation below it), and the time lag is *now* minus that
time. It needs no reads of the data, only the samples the exporter takes anyway.

*Record timestamp* (the one-shot CLI, whose few samples make a poor table):
the first record not yet consumed is the one at the committed offset; its
Kafka timestamp is when it was produced, so the time lag is *now* minus that
timestamp. Exact, at the cost of one fetch per lagging partition. The exporter
uses it too where the table cannot interpolate (fewer than two samples, or an
offset older than the table): there the table only bounds the lag from below.

Both are 0 when the lag is 0.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    time: float  # seconds since the epoch
    offset: int  # the partition's log-end offset at that time


@dataclass(frozen=True)
class Prediction:
    time: float  # when the log end was (or is estimated to have been) at the offset looked up
    extrapolated: bool  # the offset was older than the table: read off the table's overall trend


class OffsetHistory:
    """The lookup table of one partition, ``limit`` points at most (oldest dropped).

    >>> h = OffsetHistory(limit=10)
    >>> h.add(100.0, 0); h.add(110.0, 100); h.add(120.0, 300)
    >>> h.time_lag(200, now=125.0)  # the log end passed 200 at t=115
    10.0
    >>> h.time_lag(300, now=125.0)  # caught up
    0.0
    """

    def __init__(self, limit: int = 60) -> None:
        if limit < 2:
            raise ValueError("an offset history needs room for at least two points")
        self.limit = limit
        self._points: deque[Point] = deque(maxlen=limit)

    @property
    def points(self) -> list[Point]:
        return list(self._points)

    def __len__(self) -> int:
        return len(self._points)

    @property
    def latest(self) -> Point | None:
        return self._points[-1] if self._points else None

    def add(self, time: float, offset: int) -> None:
        """Record the log-end offset seen at ``time``."""
        point = Point(time, offset)
        if self._points:
            last = self._points[-1]
            if time <= last.time:
                return  # out of order
            if offset < last.offset:
                # kafka-lag-exporter ignores such points; a log end only moves back when the topic was
                # deleted and recreated, and then the old table describes another log: start over.
                self._points.clear()
            elif (
                offset == last.offset and len(self._points) > 1 and self._points[-2].offset == offset
            ):
                # A flat line is kept as two points, its first and its latest: the right end moves on,
                # so the time an offset was last the log end stays exact and the table keeps its span.
                self._points[-1] = point
                return
        self._points.append(point)

    def predict(self, offset: int) -> Prediction | None:
        """When the log end was ``offset``; None with fewer than two points (nothing to interpolate)."""
        pts = self._points
        if len(pts) < 2:
            return None
        # Newest segment first: on a flat stretch the latest time the log end sat there is what counts
        # (the record at that offset was produced after it).
        for i in range(len(pts) - 1, 0, -1):
            left, right = pts[i - 1], pts[i]
            if left.offset <= offset <= right.offset and right.offset > left.offset:
                return Prediction(_solve(left, right, offset), extrapolated=False)
        first, last = pts[0], pts[-1]
        if last.offset == first.offset:
            # Nothing was produced over the whole table: the offset sat there before it began, so
            # the table's start is the newest time that can be claimed (the time lag is at least this).
            return Prediction(first.time, extrapolated=True)
        return Prediction(_solve(first, last, offset), extrapolated=True)

    def time_lag(self, committed: int, now: float) -> float | None:
        """Seconds behind for a consumer at ``committed``; 0 when caught up, None when unknown."""
        last = self.latest
        if last is None:
            return None
        if committed >= last.offset:
            return 0.0
        p = self.predict(committed)
        return None if p is None else max(0.0, now - p.time)


def _solve(left: Point, right: Point, offset: int) -> float:
    # The line through both points, solved for the time at which it reaches ``offset``.
    slope = (right.time - left.time) / (right.offset - left.offset)
    return right.time - (right.offset - offset) * slope


def record_time_lag(lag: int | None, record_timestamp_ms: int | None, now: float) -> float | None:
    """Seconds since the first unconsumed record was produced; 0 without lag, None when unknown.

    >>> record_time_lag(5, 1_000_000, now=1_010.5)
    10.5
    >>> record_time_lag(0, None, now=1_010.5)
    0.0
    """
    if lag is not None and lag <= 0:
        return 0.0
    if lag is None or record_timestamp_ms is None or record_timestamp_ms < 0:
        return None
    return max(0.0, now - record_timestamp_ms / 1000)
