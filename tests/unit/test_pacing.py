"""The bytes-per-second bucket of each machine (server/pacing.py), on a clock the test
turns."""

from __future__ import annotations

from cloudremotecontrol.server.pacing import MIN_COST, Paces


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_free_then_each_frame_waits_for_what_the_rate_refills() -> None:
    clock = _Clock()
    paces = Paces(rate=4096, burst=8192, clock=clock)
    assert [paces.charge("a", 4096) for _ in range(2)] == [0.0, 0.0]
    assert paces.charge("a", 4096) == 1.0  # in debt by 4096 bytes: a second at 4096/s
    clock.now += 1.0
    assert paces.charge("a", 2048) == 0.5  # paid off, then 2048 more
    clock.now += 10.0  # refilled, never past the burst
    assert [paces.charge("a", 4096) for _ in range(3)] == [0.0, 0.0, 1.0]


def test_small_frames_cost_at_least_the_minimum() -> None:
    paces = Paces(rate=MIN_COST, burst=MIN_COST, clock=_Clock())
    assert paces.charge("a", 1) == 0.0
    assert paces.charge("a", 1) == 1.0


def test_machines_have_buckets_of_their_own() -> None:
    paces = Paces(rate=1024, burst=2048, clock=_Clock())
    assert paces.charge("a", 4096) == 2.0
    assert paces.charge("b", 2048) == 0.0


def test_full_buckets_are_forgotten() -> None:
    clock = _Clock()
    paces = Paces(rate=1024, burst=2048, clock=clock)
    for n in range(3000):
        paces.charge(f"m{n}", 1024)
    assert len(paces) <= 3000
    clock.now += 1.0  # every bucket refilled
    paces.forget_full()
    assert len(paces) == 0
    paces.charge("a", 4096)
    clock.now += 1.0  # a is still in debt: kept
    paces.forget_full()
    assert len(paces) == 1


def test_the_buckets_held_stay_bounded_by_the_machines_in_debt() -> None:
    clock = _Clock()
    paces = Paces(rate=1024, burst=1024, clock=clock)
    for n in range(10_000):
        paces.charge(f"m{n}", 1024)
        clock.now += 0.01  # each bucket is full again a second later
    assert len(paces) < 4096
