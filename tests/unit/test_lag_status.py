"""Burrow's evaluation rules on synthetic commit windows, and the sampled window that feeds them."""

from __future__ import annotations

import doctest

import pytest

import workers.lag.status
from workers.lag.status import Commit, CommitWindow, Status, group_status, partition_status


def commits(*rows: tuple[int, float, int]) -> list[Commit]:
    return [Commit(offset, t, lag) for offset, t, lag in rows]


def test_doctests() -> None:
    assert doctest.testmod(workers.lag.status).failed == 0


def test_no_current_lag_is_ok_whatever_the_window() -> None:
    w = commits((10, 0.0, 5), (5, 10.0, 9))  # a rewind, but the consumer has caught up since
    assert partition_status(w, [100], current_lag=0, now=1000.0) is Status.OK


def test_no_commits_is_ok() -> None:
    assert partition_status([], [10], current_lag=10, now=1.0) is Status.OK


def test_moving_with_shrinking_lag_is_ok() -> None:
    w = commits((10, 0.0, 90), (30, 5.0, 70), (50, 10.0, 50))
    assert partition_status(w, [100] * 3, current_lag=50, now=10.0) is Status.OK


def test_lag_zero_anywhere_in_the_window_is_ok() -> None:
    w = commits((100, 0.0, 0), (100, 5.0, 10), (100, 10.0, 20))
    assert partition_status(w, [100, 110, 120], current_lag=20, now=10.0) is Status.OK


def test_committing_the_same_offset_with_lag_is_stall() -> None:
    w = commits((10, 0.0, 90), (10, 5.0, 90), (10, 10.0, 95))
    assert partition_status(w, [100, 100, 105], current_lag=95, now=10.0) is Status.STALL


def test_moving_but_lag_never_decreasing_is_warn() -> None:
    w = commits((10, 0.0, 90), (20, 5.0, 90), (30, 10.0, 100))
    assert partition_status(w, [100, 110, 130], current_lag=100, now=10.0) is Status.WARN


def test_any_decrease_in_lag_clears_warn() -> None:
    w = commits((10, 0.0, 90), (20, 5.0, 95), (40, 10.0, 94), (50, 15.0, 100))
    assert partition_status(w, [100], current_lag=100, now=15.0) is Status.OK


def test_offset_going_back_is_rewind() -> None:
    w = commits((50, 0.0, 50), (20, 5.0, 80), (30, 10.0, 70))
    assert partition_status(w, [100] * 3, current_lag=70, now=10.0) is Status.REWIND


def test_rewind_outranks_stall_and_warn() -> None:
    w = commits((50, 0.0, 50), (20, 5.0, 80), (20, 10.0, 90))
    assert partition_status(w, [100, 100, 110], current_lag=90, now=10.0) is Status.REWIND


def test_commits_older_than_the_window_span_with_lag_is_stop() -> None:
    w = commits((10, 0.0, 90), (30, 5.0, 70))
    # span 5 s; 5 s after the last commit it is not stopped yet, later it is
    assert partition_status(w, [100, 100], current_lag=70, now=10.0) is not Status.STOP
    assert partition_status(w, [100, 100], current_lag=70, now=10.5) is Status.STOP


def test_stop_outranks_rewind_and_ignores_old_zero_lag() -> None:
    w = commits((50, 0.0, 0), (20, 5.0, 80))
    assert partition_status(w, [100, 100], current_lag=80, now=100.0) is Status.STOP


def test_stop_waits_while_a_recent_log_end_had_the_consumer_caught_up() -> None:
    # New data just arrived after a quiet period: the consumer had zero lag a sample ago.
    w = commits((100, 0.0, 0), (100, 5.0, 0))
    assert partition_status(w, [100, 100, 105], current_lag=5, now=60.0) is Status.OK
    assert partition_status(w, [105, 105, 105], current_lag=5, now=60.0) is Status.STOP


def test_a_single_commit_can_only_be_stop() -> None:
    w = commits((10, 5.0, 90))
    assert partition_status(w, [100], current_lag=90, now=5.0) is Status.OK
    assert partition_status(w, [100], current_lag=90, now=6.0) is Status.STOP


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], Status.OK),
        ([Status.OK, Status.OK], Status.OK),
        ([Status.OK, Status.WARN], Status.WARN),
        ([Status.WARN, Status.STOP], Status.ERR),
        ([Status.OK, Status.STALL], Status.ERR),
        ([Status.OK, Status.REWIND], Status.ERR),
    ],
)
def test_group_is_the_worst_partition_capped_at_err(parts: list[Status], expected: Status) -> None:
    assert group_status(parts) is expected


def test_status_codes_are_burrows() -> None:
    assert [s.code for s in Status] == [1, 2, 3, 4, 5, 6]


def test_live_consumer_adds_an_entry_per_sample_even_without_progress() -> None:
    w = CommitWindow(size=4)
    for t in (0.0, 5.0, 10.0):
        w.observe(t, committed=10, log_end=50, live=True)
    assert [c.time for c in w.commits] == [0.0, 5.0, 10.0]
    assert w.status(now=10.0) is Status.STALL


def test_a_group_without_members_adds_entries_only_when_the_offset_moves() -> None:
    w = CommitWindow(size=4)
    w.observe(0.0, committed=10, log_end=50, live=False)
    w.observe(5.0, committed=10, log_end=50, live=False)
    w.observe(10.0, committed=20, log_end=50, live=False)
    w.observe(15.0, committed=20, log_end=50, live=False)
    assert [(c.offset, c.time, c.lag) for c in w.commits] == [(10, 0.0, 40), (20, 10.0, 30)]
    assert w.status(now=15.0) is Status.OK
    assert w.status(now=20.5) is Status.STOP


def test_never_committed_is_ok_and_adds_nothing() -> None:
    w = CommitWindow(size=3)
    w.observe(0.0, committed=None, log_end=50, live=True)
    assert not w.commits and w.current_lag == 0
    assert w.status(now=100.0) is Status.OK


def test_window_is_bounded_and_reports_completeness() -> None:
    w = CommitWindow(size=3)
    w.observe(0.0, committed=1, log_end=10, live=True)
    assert w.complete == pytest.approx(1 / 3)
    for t in range(1, 10):
        w.observe(float(t), committed=1 + t, log_end=10 + t, live=True)
    assert len(w.commits) == 3 and len(w.log_ends) == 3
    assert w.complete == 1.0
    assert w.commits[0].offset == 8


def test_window_needs_room_for_two_commits() -> None:
    with pytest.raises(ValueError):
        CommitWindow(size=1)
