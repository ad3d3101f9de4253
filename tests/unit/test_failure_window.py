"""The per-address failure window: attempts under way count against the limit until
they end, so checking and counting is one step (server/ratelimit.py)."""

from __future__ import annotations

from cloudremotecontrol.server.ratelimit import WINDOW_SECONDS, FailureWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_attempts_under_way_count_against_the_limit_until_they_end() -> None:
    w = FailureWindow(3, Clock())
    assert [w.begin("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert w.begin("a") > 0  # three under way: a fourth waits
    assert w.begin("b") == 0.0  # another address does not
    w.end("a", failed=False)  # a success frees its place
    assert w.begin("a") == 0.0
    for _ in range(3):
        w.end("a", failed=True)
    assert w.begin("a") > 0  # three failures in the window


def test_failures_leave_the_window_after_a_minute() -> None:
    clock = Clock()
    w = FailureWindow(2, clock)
    for _ in range(2):
        assert w.begin("a") == 0.0
        w.end("a", failed=True)
    assert w.begin("a") == WINDOW_SECONDS
    clock.now += WINDOW_SECONDS
    assert w.begin("a") == 0.0
    w.end("a", failed=False)
    assert w.retry_after("a") == 0.0
