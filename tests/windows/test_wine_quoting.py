"""Template values in cmd commands (master/scenario/shellquote.py) run by a real
``cmd.exe`` under Wine: hostile values never run a command, and a value reaches the
program as exactly one argument.

Each rendered command is run twice by the Windows Python: with the command line given
verbatim (``cmd.exe /d /s /c "..."``, what cmd is meant to receive), and the way the
agent starts cmd (``subprocess`` with shell=True and cmd's path: ``cmd.exe /c "..."``,
the command as written). Both must give each program the same arguments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wine_machine import PYTHON, WinePrefix

from cloudremotecontrol.master.scenario import templates

ARGS_PY = "import sys, json\nprint(json.dumps(sys.argv[1:]))\n"
RUNNER_PY = r"""
import json, os, shutil, subprocess
CMD = shutil.which("cmd.exe")
cases = json.load(open(r"C:\crc-q\cases.json", encoding="utf-8"))
os.makedirs(r"C:\crc-q\work", exist_ok=True)
out = []
def both(c):
    verbatim = subprocess.run(
        'cmd.exe /d /s /c "' + c["command"] + '"',
        capture_output=True, cwd=r"C:\crc-q\work", stdin=subprocess.DEVNULL,
    )
    agent = subprocess.run(  # as the agent starts cmd (WindowsPlatform.verbatim_shell)
        c["command"], shell=True, executable=CMD,
        capture_output=True, cwd=r"C:\crc-q\work", stdin=subprocess.DEVNULL,
    )
    return verbatim, agent
for c in cases:
    # Wine now and then starts a process that prints nothing at all (no output, no
    # error), and now and then fails to create one (cmd then says the whole line "is not
    # recognized" and exits 9009, as after any failed CreateProcess): such a run is made
    # again, at most twice. What a command prints is the same each time, so a wrong
    # result, a line cmd cannot launch among them, is never retried away.
    for _ in range(3):
        verbatim, agent = both(c)
        if all((r.stdout or r.stderr) and r.returncode != 9009 for r in (verbatim, agent)):
            break
    out.append({
        "verbatim": verbatim.stdout.decode("utf-8", "replace"),
        "agent": agent.stdout.decode("utf-8", "replace"),
        "stderr": (verbatim.stderr + agent.stderr).decode("utf-8", "replace")[-500:],
    })
json.dump(out, open(r"C:\crc-q\results.json", "w", encoding="utf-8"))
"""

PROGRAM = PYTHON + r" C:\crc-q\args.py"
TEMPLATES = [
    (PROGRAM + " db={{ vars.v }}", "db=<>"),
    (PROGRAM + ' "db={{ vars.v }}"', "db=<>"),
    (PROGRAM + ' "db={{ vars.v }}" next', "db=<>"),
    ("(" + PROGRAM + " {{ vars.v }} & " + PROGRAM + " second)", "<>"),
]
VALUES = [
    "db$(touch PWNED)",
    "a & echo PWNED> pwned.txt",
    'x" & echo PWNED> pwned.txt & "',
    '"& echo PWNED> pwned.txt &"',
    "a | echo PWNED> pwned.txt",
    "a ^& echo PWNED> pwned.txt",
    "(x) ) & echo PWNED> pwned.txt",
    "<in >pwned.txt",
    'q"uote',
    'tail\\"',
    "back\\",
    "back\\\\",
    "!PATH!",
    "tab\there and spaces",
    "",
    "é ü €",
]
REFUSED = ["50%", "%PATH%", "line\nbreak", "cr\rhere"]


@pytest.fixture(scope="module")
def results(
    wine_template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]], WinePrefix]]:
    prefix = WinePrefix(Path(wine_template["prefix"]), tmp_path_factory.mktemp("wineq"))
    try:
        prefix.start()
        root = prefix.host_path(r"C:\crc-q")
        root.mkdir(parents=True)
        (root / "args.py").write_text(ARGS_PY)
        (root / "run.py").write_text(RUNNER_PY)
        cases = [
            {"value": v, "template": t, "expect": e, "command": _render(t, v)}
            for t, e in TEMPLATES
            for v in VALUES
        ]
        (root / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
        out = prefix.python(r"C:\crc-q\run.py", timeout=600)
        assert out.returncode == 0, (out.stdout, out.stderr)
        got = json.loads((root / "results.json").read_text(encoding="utf-8"))
        yield cases, got, prefix
    finally:
        prefix.close()


def _render(template: str, value: str) -> str:
    return templates.render(template, {"vars": {"v": value}}, "cmd")


def test_hostile_values_reach_the_program_as_one_argument_and_run_nothing(
    results: tuple[list[dict[str, Any]], list[dict[str, Any]], WinePrefix],
) -> None:
    cases, got, prefix = results
    assert len(got) == len(cases) == len(TEMPLATES) * len(VALUES)
    for case, result in zip(cases, got, strict=True):
        lines = [ln for ln in result["verbatim"].splitlines() if ln.startswith("[")]
        assert lines, (case, result)
        argv = json.loads(lines[0])
        expect = case["expect"].replace("<>", case["value"])
        assert argv[0] == expect, (case, result)
        if "next" in case["template"]:
            assert argv[1:] == ["next"], (case, result)
        else:
            assert len(argv) == 1, (case, result)
        if "second" in case["template"]:
            assert json.loads(lines[1]) == ["second"], (case, result)
        agent = [ln for ln in result["agent"].splitlines() if ln.startswith("[")]
        assert agent == lines, (case, result)
    # Neither way ran a command from a value: nothing was written.
    assert list(prefix.host_path(r"C:\crc-q\work").iterdir()) == []
