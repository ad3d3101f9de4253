"""protocol/rollout.py: the rules of rate control, as pure decisions."""

from __future__ import annotations

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.protocol.rollout import (
    Limit,
    Rollout,
    TargetState,
    parse_limit,
    parse_seconds,
    plan,
)
from cloudremotecontrol.protocol.states import JobStatus

J = JobStatus
T0 = 1000.0


def targets(*states: tuple[J, bool, float]) -> list[TargetState]:
    return [TargetState(f"m{i:02d}", s, held, at) for i, (s, held, at) in enumerate(states)]


def held(n: int) -> list[tuple[J, bool, float]]:
    return [(J.QUEUED, True, T0)] * n


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, Limit(5)), ("5", Limit(5)), (" 10% ", Limit(10, True)), ("100%", Limit(100, True))],
)
def test_limits_are_counts_or_percentages(value: object, expected: Limit) -> None:
    assert parse_limit(value, "max_concurrency") == expected


@pytest.mark.parametrize(
    "value", [0, "0", "0%", -1, "-1", "101%", "1.5", 2.5, "ten", "", "5%%", True, [], "9" * 9]
)
def test_bad_limits_are_refused_naming_the_option(value: object) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_limit(value, "max_errors")
    assert err.value.message.startswith("max_errors must be "), err.value.message


@pytest.mark.parametrize(
    "value",
    [
        *(0, -3, "x", float("nan"), float("inf"), 8 * 86400, True),
        pytest.param(10**400, id="int beyond any float"),
        pytest.param(-(10**400), id="negative int beyond any float"),
    ],
)
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_seconds(value, "batch_wait")
    assert err.value.message.startswith("batch_wait must be ")
    assert err.value.details == {"field": "batch_wait"}


@pytest.mark.parametrize(
    ("body", "flags", "said"),
    [
        ({"max_errors": "150%"}, False, "max_errors must be at most 100%, got 150%"),
        ({"max_errors": "150%"}, True, "--max-errors must be at most 100%, got 150%"),
        ({"canary": "10%"}, False, "canary must be a number of targets, not a percentage"),
        ({"canary": "10%"}, True, "--canary must be a number of targets, not a percentage"),
        ({"deliver_within": 0}, True, "--deliver-within must be more than 0 seconds, got 0"),
        ({"max_concurrency": 0}, False, "max_concurrency must be at least 1 (or 1%), got 0"),
    ],
)
def test_refusals_name_the_key_as_its_user_wrote_it(
    body: dict[str, object], flags: bool, said: str
) -> None:
    """A request or a scenario step names ``max_errors``; the command line ``--max-errors``."""
    with pytest.raises(InvalidInput) as err:
        Rollout.from_body(body, flags=flags)
    assert err.value.message == said
    assert err.value.details == {"field": next(iter(body))}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"canary": 0}, "--canary must be at least 1, got 0"),
        ({"canary": "0%"}, "--canary must be a number of targets, not a percentage"),
        ({"canary": "x"}, "--canary must be a number of targets (e.g. 3), got 'x'"),
        ({"max_concurrency": 0}, "--max-concurrency must be at least 1 (or 1%), got 0"),
        ({"max_errors": "0%"}, "--max-errors must be at least 1 (or 1%), got 0"),
        (
            {"max_errors": "x"},
            "--max-errors must be a number of targets (e.g. 10) or a percentage of them "
            "(e.g. 25%), got 'x'",
        ),
    ],
)
def test_only_the_options_that_take_a_percentage_suggest_one(
    body: dict[str, object], said: str
) -> None:
    """--canary takes N only: its refusals never offer ``1%`` or ``25%``."""
    with pytest.raises(InvalidInput) as err:
        Rollout.from_body(body, flags=True)
    assert err.value.message == said
    assert err.value.details == {"field": next(iter(body))}


def test_percentages_round_up_and_are_at_least_one() -> None:
    assert Limit(10, True).of(95) == 10
    assert Limit(1, True).of(3) == 1
    assert Limit(50, True).of(3) == 2
    assert Limit(7).of(3) == 7


def test_no_keys_is_no_rollout_and_the_stored_form_round_trips() -> None:
    assert Rollout.from_body({"max_concurrency": None}) is None
    r = Rollout.from_body({"max_concurrency": "25%", "max_errors": 2, "canary": "3"})
    assert r == Rollout(Limit(25, True), Limit(2), canary=3)
    assert r.to_body() == {"max_concurrency": "25%", "max_errors": "2", "canary": 3}
    with pytest.raises(InvalidInput):
        Rollout.from_body({"canary": "10%"})


def test_concurrency_releases_up_to_the_limit_then_one_per_ending() -> None:
    r = Rollout(max_concurrency=Limit(3))
    p = plan(r, targets(*held(10)), T0, T0)
    assert p.release == ("m00", "m01", "m02") and p.next_check is None
    running = [(J.RUNNING, False, T0)] * 3 + held(7)
    assert plan(r, targets(*running), T0, T0 + 1).release == ()
    one_done = [(J.SUCCEEDED, False, T0 + 1)] + [(J.RUNNING, False, T0)] * 2 + held(7)
    assert plan(r, targets(*one_done), T0, T0 + 1).release == ("m03",)


def test_queued_and_delivered_targets_hold_slots_too() -> None:
    r = Rollout(max_concurrency=Limit(2))
    ts = targets((J.QUEUED, False, T0), (J.DELIVERED, False, T0), *held(3))
    assert plan(r, ts, T0, T0).release == ()


def test_batch_wait_keeps_the_slot_and_asks_to_be_woken() -> None:
    r = Rollout(max_concurrency=Limit(1), batch_wait=5.0)
    ts = targets((J.SUCCEEDED, False, T0 + 1), *held(2))
    p = plan(r, ts, T0, T0 + 2)
    assert p.release == () and p.next_check == T0 + 6
    assert plan(r, ts, T0, T0 + 6).release == ("m01",)


def test_error_budget_spent_skips_every_held_target_but_lets_running_ones_finish() -> None:
    r = Rollout(max_concurrency=Limit(2), max_errors=Limit(1))
    ts = targets((J.FAILED, False, T0), (J.RUNNING, False, T0), *held(3))
    p = plan(r, ts, T0, T0 + 1)
    assert p.release == () and p.skip == ("m02", "m03", "m04")
    assert p.skip_reason is not None and "error budget" in p.skip_reason
    under = Rollout(max_concurrency=Limit(2), max_errors=Limit(2))
    assert plan(under, ts, T0, T0 + 1).release == ("m02",)


@pytest.mark.parametrize("bad", [J.FAILED, J.TIMED_OUT, J.LOST])
def test_errors_are_failed_timed_out_and_lost(bad: J) -> None:
    r = Rollout(max_errors=Limit(25, True))  # of 4 targets: 1
    ts = targets((bad, False, T0), (J.SUCCEEDED, False, T0), *held(2))
    assert plan(r, ts, T0, T0).skip == ("m02", "m03")
    ok = targets((J.CANCELLED, False, T0), (J.SUCCEEDED, False, T0), *held(2))
    assert plan(r, ok, T0, T0).release == ("m02", "m03")


def test_canary_runs_first_then_the_rest_only_if_all_succeeded() -> None:
    r = Rollout(canary=2)
    p = plan(r, targets(*held(5)), T0, T0)
    assert p.release == ("m00", "m01")
    half = targets((J.SUCCEEDED, False, T0), (J.RUNNING, False, T0), *held(3))
    assert plan(r, half, T0, T0).release == ()
    good = targets((J.SUCCEEDED, False, T0), (J.SUCCEEDED, False, T0), *held(3))
    assert plan(r, good, T0, T0).release == ("m02", "m03", "m04")
    bad = targets((J.SUCCEEDED, False, T0), (J.FAILED, False, T0), *held(3))
    p = plan(r, bad, T0, T0)
    assert p.release == () and p.skip == ("m02", "m03", "m04")
    assert p.skip_reason is not None and "canary failed: m01 ended failed" in p.skip_reason


def test_canary_respects_concurrency_and_batch_wait_after_it() -> None:
    r = Rollout(max_concurrency=Limit(1), canary=3, batch_wait=2.0)
    assert plan(r, targets(*held(5)), T0, T0).release == ("m00",)
    done = targets(*[(J.SUCCEEDED, False, T0 + 1)] * 3, *held(2))
    p = plan(r, done, T0, T0 + 2)
    assert p.release == () and p.next_check == T0 + 3
    assert plan(r, done, T0, T0 + 3).release == ("m03",)


def test_deliver_within_expires_targets_not_reached_and_waits_for_the_deadline() -> None:
    r = Rollout(max_concurrency=Limit(1), deliver_within=10.0)
    ts = targets((J.QUEUED, False, T0), (J.RUNNING, False, T0), *held(2))
    p = plan(r, ts, T0, T0 + 1)
    assert p.release == () and p.expire == () and p.next_check == T0 + 10
    p = plan(r, ts, T0, T0 + 10)
    assert p.expire == ("m00", "m02", "m03") and p.release == ()


def test_nothing_left_to_decide_needs_no_wake_up() -> None:
    r = Rollout(max_concurrency=Limit(2), deliver_within=10.0)
    ts = targets((J.SUCCEEDED, False, T0), (J.RUNNING, False, T0))
    assert plan(r, ts, T0, T0 + 1) == plan(r, ts, T0, T0 + 1)
    assert plan(r, ts, T0, T0 + 1).next_check is None
