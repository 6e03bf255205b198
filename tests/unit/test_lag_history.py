"""Time lag on synthetic histories: kafka-lag-exporter's interpolation, and the record-timestamp method."""

from __future__ import annotations

import doctest

import pytest

import workers.lag.history
from workers.lag.history import OffsetHistory, Point, Prediction, record_time_lag


def table(*points: tuple[float, int], limit: int = 60) -> OffsetHistory:
    h = OffsetHistory(limit=limit)
    for t, off in points:
        h.add(t, off)
    return h


def test_doctests() -> None:
    assert doctest.testmod(workers.lag.history).failed == 0


def test_interpolates_between_the_two_samples_around_the_offset() -> None:
    h = table((0.0, 0), (10.0, 100), (20.0, 300))
    assert h.predict(50) == Prediction(5.0, extrapolated=False)
    assert h.predict(200) == Prediction(15.0, extrapolated=False)
    assert h.time_lag(200, now=30.0) == 15.0


def test_an_offset_on_a_sample_is_that_sample_time() -> None:
    h = table((0.0, 0), (10.0, 100), (20.0, 300))
    assert h.predict(100) == Prediction(10.0, extrapolated=False)


def test_zero_when_caught_up_or_ahead_of_the_last_sample() -> None:
    h = table((0.0, 0), (10.0, 100))
    assert h.time_lag(100, now=50.0) == 0.0
    assert h.time_lag(150, now=50.0) == 0.0


def test_unknown_without_samples_or_with_one() -> None:
    assert OffsetHistory().time_lag(0, now=1.0) is None
    assert table((0.0, 10)).time_lag(5, now=1.0) is None
    assert table((0.0, 10)).time_lag(10, now=1.0) == 0.0


def test_extrapolates_below_the_table_along_its_overall_trend() -> None:
    h = table((100.0, 1000), (110.0, 1100), (120.0, 1300))
    p = h.predict(800)
    assert p is not None and p.extrapolated
    # trend from (100, 1000) to (120, 1300): 15 records/s, so 800 was reached 200/15 s before t=100
    assert p.time == pytest.approx(100.0 - 200 / 15)


def test_flat_lines_keep_their_first_and_latest_point() -> None:
    h = table((0.0, 100), (10.0, 200), (20.0, 200), (30.0, 200), (40.0, 200))
    assert h.points == [Point(0.0, 100), Point(10.0, 200), Point(40.0, 200)]


def test_on_a_flat_stretch_the_latest_time_counts() -> None:
    # The log end sat at 200 from t=10 to t=30, then moved: record 200 was produced after t=30.
    h = table((0.0, 100), (10.0, 200), (30.0, 200), (40.0, 300))
    assert h.predict(200) == Prediction(30.0, extrapolated=False)
    assert h.predict(250) == Prediction(35.0, extrapolated=False)


def test_nothing_produced_over_the_whole_table_gives_a_lower_bound() -> None:
    h = table((50.0, 500), (60.0, 500))
    assert h.predict(400) == Prediction(50.0, extrapolated=True)
    assert h.time_lag(400, now=70.0) == 20.0


def test_out_of_order_points_are_ignored() -> None:
    h = table((10.0, 100), (5.0, 50), (10.0, 120))
    assert h.points == [Point(10.0, 100)]


def test_a_log_end_that_moves_back_starts_a_new_table() -> None:
    h = table((0.0, 100), (10.0, 200), (20.0, 5))
    assert h.points == [Point(20.0, 5)]


def test_the_table_is_bounded() -> None:
    h = table(*[(float(t), t * 10) for t in range(100)], limit=5)
    assert len(h) == 5
    assert h.points[0] == Point(95.0, 950)


def test_needs_room_for_two_points() -> None:
    with pytest.raises(ValueError):
        OffsetHistory(limit=1)


def test_never_negative() -> None:
    h = table((0.0, 0), (10.0, 100))
    assert h.time_lag(50, now=1.0) == 0.0


@pytest.mark.parametrize(
    ("lag", "ts_ms", "now", "expected"),
    [
        (3, 10_000, 12.5, 2.5),
        (0, 10_000, 12.5, 0.0),
        (0, None, 12.5, 0.0),
        (3, None, 12.5, None),
        (None, 10_000, 12.5, None),
        (3, -1, 12.5, None),  # no timestamp on the record
        (3, 20_000, 12.5, 0.0),  # a producer clock ahead of ours
    ],
)
def test_record_time_lag(lag: int | None, ts_ms: int | None, now: float, expected: float | None) -> None:
    assert record_time_lag(lag, ts_ms, now) == expected
