"""The login gate's bound and its Retry-After schedule (server/admission.py), and how
the agent reads and honours Retry-After (agent/core.py)."""

from __future__ import annotations

from cloudremotecontrol.agent.core import RETRY_AFTER_MAX, parse_retry_after, retry_delay
from cloudremotecontrol.server.admission import MAX_RETRY_AFTER, LoginGate


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_logins_past_the_bound_are_refused_until_a_place_is_given_back() -> None:
    gate = LoginGate(2, clock=Clock())
    assert gate.enter() is None
    assert gate.enter() is None
    retry = gate.enter()
    assert retry is not None and retry >= 1
    assert gate.refused == 1
    gate.leave(gate.start(), completed=True)
    assert gate.enter() is None


def test_refusals_are_spread_over_the_time_the_server_needs() -> None:
    clock = Clock()
    gate = LoginGate(10, clock=clock)
    gate.mean_seconds = 0.1  # 100 logins per second
    for _ in range(10):
        assert gate.enter() is None
    told = [gate.enter() for _ in range(1000)]
    assert all(t is not None for t in told)
    values = [t for t in told if t is not None]
    assert values == sorted(values)  # later refusals are told to come later
    assert min(values) == 1 and max(values) == 10  # 1,000 at 100/s: over 10 s
    more = [gate.enter() for _ in range(100_000)]
    assert max(t for t in more if t is not None) == MAX_RETRY_AFTER  # bounded


def test_the_mean_login_time_follows_completed_logins_only() -> None:
    clock = Clock()
    gate = LoginGate(1, clock=clock)
    before = gate.mean_seconds
    assert gate.enter() is None
    started = gate.start()
    clock.t += 5.0
    gate.leave(started, completed=False)  # refused or gone: not a measure of capacity
    assert gate.mean_seconds == before
    assert gate.enter() is None
    started = gate.start()
    clock.t += 1.0
    gate.leave(started, completed=True)
    assert gate.mean_seconds > before


def test_one_login_in_progress_per_credential() -> None:
    gate = LoginGate(10)
    assert gate.claim("m1")
    assert not gate.claim("m1")
    assert gate.claim("m2")
    gate.unclaim("m1")
    assert gate.claim("m1")


def test_the_agent_reads_delta_seconds_only_and_bounds_them() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 12 ") == 12.0
    assert parse_retry_after("999999") == float(RETRY_AFTER_MAX)
    # "²" and "³⁵" are digits to str.isdigit(), not to int(): ignored, not a crash.
    for bad in (None, "", "-1", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT", "9" * 40, "²", "³⁵"):
        assert parse_retry_after(bad) is None


def test_the_agent_waits_at_least_what_it_was_told_plus_jitter() -> None:
    delays = [retry_delay(8.0) for _ in range(200)]
    assert all(8.0 <= d <= 10.0 for d in delays)
    assert len(set(delays)) > 1
    assert all(1.0 <= retry_delay(1.0) <= 2.0 for _ in range(50))


def test_the_pre_auth_guard_tells_its_503s_when_to_come_back() -> None:
    from cloudremotecontrol.server.httpguard import _error_response

    head = _error_response(503, "Service Unavailable", "unavailable", "busy", 7.0).split(
        b"\r\n\r\n"
    )[0]
    assert b"retry-after: 7" in head.split(b"\r\n")
    plain = _error_response(408, "Request Timeout", "timeout", "slow").split(b"\r\n\r\n")[0]
    assert b"retry-after" not in plain
