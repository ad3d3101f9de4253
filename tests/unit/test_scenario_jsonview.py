"""What `crc up --json` prints for machines (cli/scenario_view.py): one line per change,
so a machine ready once is said ready once."""

from __future__ import annotations

import json

from cloudremotecontrol.cli.scenario_view import JsonView


def test_a_machine_line_is_printed_once_per_change(capsys) -> None:
    view = JsonView()
    view.machine("a", "pending")
    view.machine("a", "ready")
    view.machine("b", "ready")
    view.machine("a", "ready")  # where machines stand, said again at the end of a phase
    view.machine("a", progress="serving")
    view.machine("a", "ready")
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(d["machine"], d["state"], d["progress"]) for d in lines] == [
        ("a", "pending", None),
        ("a", "ready", None),
        ("b", "ready", None),
        ("a", None, "serving"),
        ("a", "ready", None),
    ]
