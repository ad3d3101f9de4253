"""SIGTERM and SIGHUP (`kill`, a closed terminal, a cancelled CI job) end `crc wait` as
Ctrl-C does: exit 143 / 129 with one line, `crc: interrupted`, never killed by the
signal (no line, exit -15). Both forms of the wait: the group's machines to be ready, and
a machine's message (--message); and the other commands that wait, `crc events --follow`
and `crc kv get --wait`. Real server, real crc process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest


def _crc(env: Any, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env.cli_env},
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize(
    "args",
    [
        ["wait", "g", "--timeout", "2m"],
        ["wait", "g", "--timeout", "2m", "--json"],
        ["wait", "g", "--message", "never", "--timeout", "2m"],
        ["events", "g", "--follow"],
        ["kv", "get", "g", "k", "--wait", "2m"],
    ],
    ids=["ready", "ready-json", "message", "events-follow", "kv-wait"],
)
def test_a_signal_ends_a_waiting_command_with_one_line_and_128_plus_it(
    env: Any, args: list[str], sig: signal.Signals
) -> None:
    env.client.create_group("g", ["a"])  # never enrolls: the wait goes on
    proc = _crc(env, *args)
    try:
        time.sleep(2)  # connected and waiting
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (128 + sig, "crc: interrupted\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_ends_the_live_table_of_crc_wait_on_a_terminal(
    env: Any, sig: signal.Signals
) -> None:
    """On a terminal (the live table): the same end, the table stopped first (the cursor
    shown again: the terminal is left as it was found) unless the terminal is gone."""
    import pty

    env.client.create_group("g", ["a"])
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "wait", "g", "--timeout", "2m"],
        stdout=sub,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env.cli_env, "TERM": "xterm", "COLUMNS": "100"},
    )
    os.close(sub)
    shown = b""
    try:
        deadline = time.monotonic() + 30
        while b"0/1 ready" not in shown:  # the table is up
            assert time.monotonic() < deadline, shown
            assert proc.poll() is None, proc.communicate()
            shown += os.read(main, 65536)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: every writer closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.close(main)
    assert (proc.returncode, err) == (128 + sig, "crc: interrupted\n")
    if sig == signal.SIGTERM:
        assert shown.rstrip(b"\r\n").endswith(b"\x1b[?25h"), shown[-200:]
