"""The lean agent (``python -m cloudremotecontrol.agent``, what the service runs) started
with its standard streams closed (``2>&-``, ``>&-``, ``<&-``, as a careless init script
or a detached launcher leaves them): each command ends with the exit code it has
otherwise, and a running agent enrolls, runs jobs and stops cleanly, its state database
intact (no log line written into a descriptor a file or a socket took)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Env

LEAN = [sys.executable, "-m", "cloudremotecontrol.agent"]
CLOSINGS = {"stderr": "2>&-", "stdout": ">&-", "all three": "<&- >&- 2>&-"}


def _sh(closing: str, argv: list[str]) -> list[str]:
    return ["sh", "-c", f'exec "$@" {closing}', "sh", *argv]


@pytest.mark.parametrize("closing", list(CLOSINGS.values()), ids=list(CLOSINGS))
def test_the_lean_agents_commands_keep_their_exit_codes(closing: str, tmp_path: Path) -> None:
    cases = [
        (["--help"], 0),
        (["run", "--no-such-option"], 2),  # a usage error
        (["run", "--state-dir", str(tmp_path / "new")], 3),  # not enrolled: no key
    ]
    for args, code in cases:
        plain = subprocess.run([*LEAN, *args], capture_output=True, text=True, timeout=60)
        assert plain.returncode == code, (args, plain.stdout, plain.stderr)
        closed = subprocess.run(
            _sh(closing, [*LEAN, *args]), capture_output=True, text=True, timeout=60
        )
        assert closed.returncode == code, (args, closing, closed.stdout, closed.stderr)
        assert "Traceback" not in closed.stdout + closed.stderr, (args, closing)


def test_an_agent_started_with_every_stream_closed_works_and_keeps_its_state_intact(
    env: Env, tmp_path: Path
) -> None:
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    state = tmp_path / "a"
    argv = [*LEAN, "run", "--state-dir", str(state), "--log-level", "debug"]
    agent_env = {
        **os.environ,
        "CRC_URL": env.server.url,
        "CRC_FINGERPRINT": env.server.fingerprint,
        "CRC_KEY": key,
    }
    proc = subprocess.Popen(_sh("<&- >&- 2>&-", argv), env=agent_env)
    try:
        env.wait_state("lab", ["a"], "ready")
        # A job with output on both streams, and one that fails: the agent logs each.
        seen: list[tuple[str, str]] = []

        def output(ev: Any) -> None:
            if ev.type == "job.output":
                seen.append((ev.data["stream"], ev.data["data"]))

        ok = env.client.run_wait(
            "lab", "all", shell="sh", command="echo out; echo err >&2", on_event=output
        )
        assert ok.results["a"].status == "succeeded", ok
        assert sorted(seen) == [("stderr", "err\n"), ("stdout", "out\n")], seen
        bad = env.client.run_wait("lab", "all", shell="sh", command="exit 7")
        assert bad.results["a"].exit_code == 7, bad
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, code
    db = sqlite3.connect(state / "agent.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    # What would have been logged went to /dev/null, not into the state's files.
    for path in state.iterdir():
        if path.is_file():
            assert b"crc.agent" not in path.read_bytes(), path
