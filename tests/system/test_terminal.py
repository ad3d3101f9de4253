"""What `crc` shows on a real terminal (a pty): the live table of `crc wait`, and text
from machines that must never reach the terminal as escape sequences."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pexpect

EVIL = "\x1b[2J\x1b]0;pwn\x07"  # clear the screen, retitle the window
SHOWN = r"\x1b[2J\x1b]0;pwn\x07"  # what a terminal must show instead


def _spawn(env: Any, *args: str) -> pexpect.spawn:
    """`crc ARGS` on a pty; everything it writes is kept in ``child.logfile_read``."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cloudremotecontrol", *args],
        env={**os.environ, **env.cli_env, "TERM": "xterm-256color"},
        dimensions=(40, 200),
        timeout=60,
    )
    child.logfile_read = io.BytesIO()
    return child


def _pty_output(env: Any, *args: str) -> bytes:
    child = _spawn(env, *args)
    child.expect(pexpect.EOF)
    child.close()
    out = child.logfile_read.getvalue()
    assert child.exitstatus == 0, out
    return bytes(out)


def _agent(env: Any, machine: str, *args: str) -> None:
    r = env.agent_cli(machine, *args)
    assert r.returncode == 0, r.stderr


def _assert_defused(out: bytes) -> None:
    assert EVIL.encode() not in out
    assert b"\x1b]0;" not in out  # no window title, from anyone
    assert b"\x1b[2J" not in out


def test_crc_wait_is_a_live_table_on_a_terminal_and_machine_text_cannot_escape_it(env):
    out = env.client.create_group("lab", ["db", "web"])
    keys = {m["name"]: m["key"] for m in out["machines"]}
    env.agent("db", keys["db"], extra=["--gate-ready"])
    env.agent("web", keys["web"], extra=["--gate-ready"])
    env.wait_state("lab", ["db", "web"], "enrolled")
    _agent(env, "db", "progress", "installing " + EVIL, "--percent", "40")
    child = _spawn(env, "wait", "lab", "--timeout", "60s")
    # The table: a title with the count, one row per machine, the escaped text.
    child.expect_exact("lab: 0/2 ready")
    child.expect_exact(SHOWN)
    _agent(env, "web", "ready")
    child.expect_exact("lab: 1/2 ready")
    _agent(env, "db", "progress", "almost " + EVIL, "--percent", "90")
    child.expect_exact("90% almost")
    _agent(env, "db", "ready")
    child.expect_exact("all 2 machine(s) of lab are ready")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    out = child.logfile_read.getvalue()
    assert b"MACHINE" in out and b"PROGRESS" in out
    # Redrawn in place (cursor moves), not a log of lines.
    assert b"\x1b[1A" in out or b"\x1b[2K" in out
    _assert_defused(out)


def test_status_events_and_messages_escape_machine_text_on_a_terminal(env, crc):
    env.group_with_agents("lab", ["db"])
    _agent(env, "db", "progress", EVIL)
    _agent(env, "db", "emit", "note", json.dumps({"text": EVIL}))
    _agent(env, "db", "kv", "set", "evil", json.dumps(EVIL))
    for args in (
        ["status", "lab"],
        ["events", "lab"],
        ["wait", "lab", "--message", "note", "--timeout", "20s"],
        ["kv", "get", "lab", "evil"],
        ["group", "show", "lab"],
    ):
        out = _pty_output(env, *args)
        _assert_defused(out)
    assert SHOWN.encode() in _pty_output(env, "events", "lab")
    assert SHOWN.encode() in _pty_output(env, "status", "lab")


def test_bidi_marks_and_line_separators_from_a_machine_are_shown_escaped(env):
    """A right-to-left mark (ALM, U+061C) can reorder the digits next to it on a
    terminal that applies bidi; line separators break a table's row."""
    env.group_with_agents("lab", ["db"])
    _agent(env, "db", "progress", "PAY \u061c1234\u061c USD\u2028next\u2029end")
    for args in (["status", "lab"], ["events", "lab"]):
        out = _pty_output(env, *args)
        for ch in ("\u061c", "\u2028", "\u2029"):
            assert ch.encode() not in out, (args, out)
        assert b"PAY \\u061c1234\\u061c USD\\u2028next\\u2029end" in out, (args, out)


def test_crc_run_output_on_a_terminal_keeps_colours_and_escapes_other_controls(env):
    """The machine's output is hostile input too: on a terminal only its colours pass
    (`--raw` for all of it); into a pipe or a file it goes as it was written."""
    env.group_with_agents("lab", ["a"])
    sh = ("--shell", "sh", "--")
    script = r"printf 'a\033[31mred\033[0m\033[2J\033]0;pwn\007\rFAKE\tz\n'"
    out = _pty_output(env, "run", "lab", "--to", "a", "--shell", "sh", "--", script)
    _assert_defused(out)
    # A carriage return ends a line (what follows gets its own prefix), shown escaped.
    assert b"[a] a\x1b[31mred\x1b[0m\\x1b[2J\\x1b]0;pwn\\x07\\r\r\n[a] FAKE\tz\r\n" in out
    raw = _pty_output(env, "run", "lab", "--to", "a", "--raw", "--shell", "sh", "--", script)
    assert b"[a] a\x1b[31mred\x1b[0m\x1b[2J\x1b]0;pwn\x07\r\r\n[a] FAKE\tz\r\n" in raw, raw
    piped = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "run", "lab", "--to", "a", *sh, script],
        env={**os.environ, **env.cli_env},
        capture_output=True,
        timeout=60,
    )
    assert piped.stdout == b"[a] a\x1b[31mred\x1b[0m\x1b[2J\x1b]0;pwn\x07\r\n[a] FAKE\tz\n"
