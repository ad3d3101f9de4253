"""How long ago, as the CLI's tables say it: the unit is chosen after rounding."""

from __future__ import annotations

import time

import pytest

from cloudremotecontrol.cli.output import ago


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.2, "0s ago"),
        (59.2, "59s ago"),
        (59.7, "1m ago"),  # was "60s ago"
        (89.0, "1m ago"),
        (3569.0, "59m ago"),
        (3590.0, "1.0h ago"),  # was "60m ago"
        (5400.0, "1.5h ago"),
    ],
)
def test_ago_never_says_sixty_of_a_unit(seconds: float, said: str) -> None:
    assert ago(time.time() - seconds) == said


def test_ago_of_nothing_or_the_future() -> None:
    assert ago(None) == "-"
    assert ago(time.time() + 30) == "0s ago"
