"""How long until a time, as `crc group list` (EXPIRES) and `crc group show`'s TTL note
say it: seconds below a minute, never `in 0m` for a group with seconds left."""

from __future__ import annotations

import pytest

from cloudremotecontrol.cli import master_cmds


@pytest.mark.parametrize(
    ("left", "shown"),
    [
        (27.0, "in 27s"),
        (1.2, "in 1s"),
        (59.4, "in 59s"),
        (59.6, "in 1m"),  # rounds up to a minute: said in minutes, not "in 60s"
        (89.0, "in 1m"),
        (91.0, "in 2m"),
        (14 * 60.0, "in 14m"),
        (3569.0, "in 59m"),
        (3590.0, "in 1.0h"),  # not "in 60m"
        (7.5 * 3600, "in 7.5h"),
        (0.2, "now"),
        (-30.0, "now"),  # passed (a retry due): not "in 0m"
    ],
)
def test_until_says_seconds_minutes_or_hours(
    monkeypatch: pytest.MonkeyPatch, left: float, shown: str
) -> None:
    monkeypatch.setattr(master_cmds.time, "time", lambda: 1_000_000.0)
    assert master_cmds._until(1_000_000.0 + left) == shown


def test_no_time_is_a_dash() -> None:
    assert master_cmds._until(None) == "-"
