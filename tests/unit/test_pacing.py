"""The bytes-per-second bucket of each machine (server/pacing.py), on a clock the test
turns, and what a frame costs."""

from __future__ import annotations

import json

from cloudremotecontrol.server.pacing import MIN_COST, Paces, charged_copies, stored_size


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_free_then_the_next_frame_waits_for_what_the_rate_refills() -> None:
    clock = _Clock()
    paces = Paces(rate=4096, burst=8192, clock=clock)
    assert paces.due("a") == 0.0  # a machine never seen
    paces.charge("a", 4096)
    paces.charge("a", 4096)
    assert paces.due("a") == 0.0  # the burst, spent to the last byte
    paces.charge("a", 4096)  # the frame that goes into debt
    assert paces.due("a") == 1.0  # 4096 bytes at 4096/s
    clock.now += 0.5
    assert paces.due("a") == 0.5
    clock.now += 0.5
    assert paces.due("a") == 0.0
    clock.now += 10.0  # refilled, never past the burst
    for _ in range(3):
        paces.charge("a", 4096)
    assert paces.due("a") == 1.0


def test_small_frames_cost_at_least_the_minimum() -> None:
    paces = Paces(rate=MIN_COST, burst=MIN_COST, clock=_Clock())
    paces.charge("a", 1)
    assert paces.due("a") == 0.0
    paces.charge("a", 1)
    assert paces.due("a") == 1.0


def test_machines_have_buckets_of_their_own() -> None:
    paces = Paces(rate=1024, burst=2048, clock=_Clock())
    paces.charge("a", 4096)
    assert (paces.due("a"), paces.due("b")) == (2.0, 0.0)


def test_full_buckets_are_forgotten() -> None:
    clock = _Clock()
    paces = Paces(rate=1024, burst=2048, clock=clock)
    for n in range(1000):
        paces.charge(f"m{n}", 1024)
    assert len(paces) == 1000  # none full again yet
    clock.now += 1.0  # every bucket refilled
    paces.forget_full()
    assert len(paces) == 0
    paces.charge("a", 4096)
    clock.now += 1.0  # a is still in debt: kept
    paces.forget_full()
    assert len(paces) == 1


def test_the_buckets_held_stay_bounded_by_the_machines_not_yet_refilled() -> None:
    clock = _Clock()
    paces = Paces(rate=1024, burst=1024, clock=clock)
    for n in range(10_000):
        paces.charge(f"m{n}", 1024)
        clock.now += 0.01  # each bucket is full again a second (100 charges) later
    assert len(paces) < 4096


def test_a_frame_costs_the_bytes_it_takes_once_stored() -> None:
    for text in ("abc", "é", "日本", "😀", 'a"é😀\\'):
        assert stored_size(text) == len(json.dumps(text)) - len(json.dumps("")) - (
            text.count('"') + text.count("\\")
        )


def test_a_message_costs_each_copy_stored_and_counts_when_refused_or_read_again() -> None:
    new, job = "user.fill", "job.output"
    error = {"code": "invalid_input", "message": "no"}
    stored = {"receipt": "new", "deliveries": []}
    refused = {"receipt": "new", "error": error}  # an agent.error event stored instead
    assert charged_copies(new, stored) == 1  # to the master: its event
    to_peers = {"receipt": "new", "deliveries": [("m1", 4, "{}"), ("m2", 9, "{}")]}
    assert charged_copies(new, to_peers) == 3  # its event and a copy for each peer
    assert charged_copies("system.ready", to_peers) == 1  # the server's hosts sync
    assert charged_copies("progress", stored)
    assert charged_copies(None, refused) and charged_copies(job, refused)
    assert charged_copies(new, {"receipt": "gap", "expected": 3})  # refused, then cut
    assert not charged_copies(job, stored)  # what a job sent reports: not counted
    unchanged = {"receipt": "new", "deliveries": [], "unchanged": True}  # its job ended
    assert charged_copies(job, unchanged) == 1
    # Sent again, stored already: read and checked again, whatever its type.
    assert charged_copies(new, {"receipt": "duplicate"})
    assert charged_copies(job, {"receipt": "duplicate"})
    # Its msg.ack refused (an error frame answers it): counted, as much as without it
    # when that is more.
    bad_ack = {"ack_error": error}
    assert charged_copies(job, {**stored, **bad_ack}) == 1
    assert charged_copies(new, {**to_peers, **bad_ack}) == 3
    assert charged_copies(job, {"receipt": "duplicate", **bad_ack}) == 1
    assert not charged_copies(job, {"receipt": "revoked", "reason": "x", **bad_ack})
    # Nothing stored: failed here (sent again later), revoked.
    assert not charged_copies(new, {"receipt": "retry", "error": error})
    assert not charged_copies(new, {"receipt": "revoked", "reason": "x", "uninstall": False})
