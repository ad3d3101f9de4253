"""What the tests of a `crc push` into, or a `crc pull` out of, a stalled mount
(stalled_fuse.py) share: the group they run on, and the command run in the background
until the master cancels its job. A test module imports the fixture by name
(``from stalled_transfers import lab_group``: the fixture ``lab``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(name="lab")
def lab_group(env: Any, tmp_path: Path) -> Any:
    """Fixture ``lab``: ``env`` with a group "lab" of one machine "a", its agent ready."""
    # As root, a hosts sync would write the machine's /etc/hosts: a file of its own.
    env.group_with_agents("lab", ["a"], env={"CRC_AGENT_HOSTS_FILE": str(tmp_path / "hosts")})
    return env


@contextmanager
def crc_running(env: Any, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`crc ARGS` started with ``env``'s credentials, its output piped; killed if it
    still runs when the block ends, and its pipes closed, whatever ended the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def ended(proc: subprocess.Popen[str], env: Any, verb: str) -> str:
    """The stderr of ``proc`` (`crc VERB`, its job cancelled) once it ended; the test
    fails if it still waits after a minute (a safety net: it ends at once)."""
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        pytest.fail(
            f"crc {verb} still waits for the cancelled {verb}'s result:\n{err}\n"
            f"{env.client.list_jobs('lab')}\n{env.agents[0].log()[-3000:]}"
        )
    return err
