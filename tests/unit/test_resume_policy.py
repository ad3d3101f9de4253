"""When a broken event stream is opened again (``calls.Resume``, used by both clients)."""

from __future__ import annotations

import pytest

from cloudremotecontrol.master.calls import Resume


def test_one_server_is_tried_again_with_growing_waits_until_the_window_ends() -> None:
    r = Resume(replicas=1, window=10.0)
    waits = [r.broke(now, jitter=1.0) for now in (100.0, 100.3, 100.8, 101.8, 103.8, 107.8)]
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, pytest.approx(2.2)]  # ends with the window
    assert r.broke(110.0, jitter=1.0) is None  # 10 s after the break: give up


def test_waits_are_capped_at_five_seconds_and_jittered() -> None:
    r = Resume(replicas=1, window=1000.0)
    waits = [r.broke(float(i), jitter=0.5) for i in range(8)]
    assert waits == [0.125, 0.25, 0.5, 1.0, 2.0, 2.5, 2.5, 2.5]


def test_replicas_are_each_tried_at_once_before_a_wait() -> None:
    r = Resume(replicas=3, window=10.0)
    waits = [r.broke(50.0, jitter=1.0) for _ in range(6)]
    assert waits == [0.0, 0.0, 0.25, 0.0, 0.0, 0.5]


def test_every_replica_is_tried_once_even_with_no_window() -> None:
    r = Resume(replicas=2, window=0.0)
    assert r.broke(5.0, jitter=1.0) == 0.0
    assert r.broke(5.0, jitter=1.0) == 0.0  # (the wait is cut to what is left: nothing)
    assert r.broke(5.0, jitter=1.0) is None


def test_an_event_read_starts_the_count_afresh() -> None:
    r = Resume(replicas=1, window=2.0)
    assert r.broke(0.0, jitter=1.0) == 0.25
    assert r.broke(1.0, jitter=1.0) == 0.5
    r.progressed()  # the stream came back and delivered an event
    assert r.broke(30.0, jitter=1.0) == 0.25  # a later break: the whole window again
    assert r.broke(31.0, jitter=1.0) == 0.5
    assert r.broke(32.5, jitter=1.0) is None


def test_jitter_leaves_the_callers_global_random_state_alone() -> None:
    """A library's background reader must not move its user's seeded ``random`` (a
    simulation, a hypothesis run): the jitter of a resumed stream has its own source."""
    import random

    from cloudremotecontrol.agent.core import retry_delay

    random.seed(1234)
    before = random.getstate()
    r = Resume(replicas=1, window=10.0)
    for _ in range(3):
        assert r.next_wait("https://x", OSError("cut")) > 0
    assert 5.0 <= retry_delay(5.0) <= 6.25
    assert random.getstate() == before


def test_a_stream_open_again_is_said_at_once_and_a_new_break_is_said_again() -> None:
    """An idle follower reopened after a restart says "resumed" when the stream opens,
    not at the next event (which may never come); a break after that is said again."""
    said: list[str] = []
    r = Resume(replicas=1, window=60.0, notify=said.append)
    r.opened("https://a")  # the first opening: nothing broke, nothing to say
    assert said == []
    r.next_wait("https://a", OSError("cut"))
    r.next_wait("https://a", OSError("refused"))  # the same break: said once
    r.opened("https://a")
    r.opened("https://a")
    assert said[1:] == ["event stream from https://a resumed"], said
    r.next_wait("https://a", OSError("cut again"))  # broke again before any event
    assert said[2].startswith("event stream from https://a broke (cut again)"), said
    r.opened("https://b")  # at another replica
    assert said[3] == "event stream from https://b resumed (it broke at https://a)", said
    r.progressed()  # an event or keepalive: nothing more said
    assert len(said) == 4, said


def test_a_keepalive_read_after_reopening_starts_the_count_afresh() -> None:
    r = Resume(replicas=1, window=2.0)
    r.broke(0.0, jitter=1.0)
    r.opened("https://a")
    r.progressed()  # a keepalive read: the stream is alive
    assert r.broke(100.0, jitter=1.0) == 0.25  # a later break: the whole window again
