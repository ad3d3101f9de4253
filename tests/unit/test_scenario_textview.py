"""What `crc up` prints without --json (cli/scenario_view.py): a machine's words reach
the terminal escaped."""

from __future__ import annotations

import pytest

from cloudremotecontrol.cli.scenario_view import TextView

HOSTILE = "killed\x1b]0;owned\x07\x1b[2J\rok"


@pytest.mark.parametrize("event", ["failed", "retrying", "skipped"])
def test_a_step_message_from_a_machine_is_escaped(event: str, capsys) -> None:
    view = TextView(live=False)
    view.step(event, "install", message=f"a: failed (exit 1): {HOSTILE}", attempt=1, delay=1)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out, repr(out)
    assert "\\x1b]0;owned\\x07" in out, out
