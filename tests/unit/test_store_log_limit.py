"""The store's log of database failures is limited per reason: a reason said often
(a background task failing on one missing column) never holds back another (the next
column dropped), and one reason is said at most once per period."""

from __future__ import annotations

import time

from cloudremotecontrol.server.store.base import LogLimit


def test_each_reason_is_said_once_per_period_and_never_holds_back_another() -> None:
    limit = LogLimit(every=60.0)
    assert limit.due("column expires")
    assert not limit.due("column expires")
    assert limit.due("column group_name")  # said at once, though another just was
    assert not limit.due("column group_name")
    assert not limit.due("column expires")


def test_a_reason_is_said_again_once_its_period_passed() -> None:
    limit = LogLimit(every=0.05)
    assert limit.due("OperationalError")
    assert not limit.due("OperationalError")
    time.sleep(0.06)
    assert limit.due("OperationalError")


def test_the_reasons_remembered_are_bounded_the_one_met_longest_ago_forgotten_first() -> None:
    limit = LogLimit(every=60.0, keep=3)
    for reason in ("a", "b", "c"):
        assert limit.due(reason)
    assert not limit.due("a")  # met again: now the latest
    assert limit.due("d")  # "b" is forgotten
    assert len(limit._said) == 3
    assert limit.due("b")  # said again, as new
    assert not limit.due("a") and not limit.due("d")
    for n in range(1000):
        limit.due(f"varied text {n}")
    assert len(limit._said) == 3
