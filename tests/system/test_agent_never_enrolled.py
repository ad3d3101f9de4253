"""`crc agent …` with a state directory where no agent ever ran (a typo, the agent's
real one elsewhere) answers at once, as for a directory that does not exist: no agent
is coming there, so waiting --agent-wait (30 s) for one would only delay the error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["progress", "x"]])
def test_a_state_dir_never_used_is_said_at_once(tmp_path: Path, args: list[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "agent", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CRC_AGENT_WAIT": "30"},
    )
    took = time.monotonic() - started
    assert r.returncode == 6, r.stdout + r.stderr
    assert r.stdout == "" and "waiting" not in r.stderr, r.stderr
    assert r.stderr == (
        f"crc: error: no agent is running with state dir {state}: none was ever started "
        f"there (no agent.db, no credential.json); enroll one with `crc agent run --url "
        f"URL --key KEY --state-dir {state}`, or give the --state-dir of the running agent\n"
    )
    assert took < 15, f"took {took:.1f} s"
