"""A machine revoked under an open stream ends it at once: the server closes the
machine's open shells and forwards, telling the master why (``machine_revoked``), and
`crc forward` / `crc shell` end with one line saying so, exit 4 (as for a deleted
group). The machine is revoked by its group's TTL passing (the group itself stays, so
only the machine's state says it is gone). The real server, agent and `crc` CLI."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from held_service import HeldService

CRC = [sys.executable, "-m", "cloudremotecontrol"]

#: The group's TTL: long enough for its agent to be ready and the stream to open.
TTL = 15.0


def _cli_env(env: Any) -> dict[str, str]:
    return {**os.environ, **env.cli_env, "TERM": "xterm", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def lab(env: Any) -> Any:
    """Group ``lab`` with machine ``dev`` ready, revoked when its TTL passes."""
    out = env.client.create_group("lab", ["dev"], ttl=TTL)
    env.expires = time.monotonic() + TTL
    env.agent("dev", out["machines"][0]["key"])
    env.wait_state("lab", ["dev"], "ready")
    return env


@pytest.fixture
def service() -> Any:
    s = HeldService()
    yield s
    s.close()


def _revoked_meanwhile(env: Any) -> None:
    """Wait until the group's TTL has revoked machine ``dev``."""
    assert time.monotonic() < env.expires - 1, "the stream opened too late for the test"
    env.wait_state("lab", ["dev"], "revoked", timeout=TTL + 30)


def test_a_forward_ends_with_exit_4_once_its_machine_is_revoked(lab, service):
    with subprocess.Popen(
        [*CRC, "forward", "lab", "dev", f"0:{service.port}"],
        env=_cli_env(lab),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        held = None
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "-> dev:127.0.0.1:" in line, line
            port = int(line.split()[0].rsplit(":", 1)[1])
            held = socket.create_connection(("127.0.0.1", port), timeout=30)
            _revoked_meanwhile(lab)
            # The connection open at the revocation is ended (its stream closed).
            held.settimeout(30)
            with contextlib.suppress(OSError):
                assert held.recv(10) == b""
            code = proc.wait(30)  # its periodic check finds the machine revoked
            err = proc.stderr.read() if proc.stderr else ""
        finally:
            if held is not None:
                held.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 4, err
    last = err.rstrip().splitlines()[-1]
    assert last == (
        "crc: error: the forward is closed: machine 'dev' of group 'lab' is revoked: "
        "see `crc status lab`"
    ), err
    assert "Traceback" not in err and err.count("crc: error:") == 1, err


def test_a_shell_ends_with_exit_4_once_its_machine_is_revoked(lab):
    with subprocess.Popen(
        [*CRC, "shell", "lab", "dev", "--", "sh", "-c", "echo REMOTE-READY; sleep 600"],
        env=_cli_env(lab),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert "REMOTE-READY" in proc.stdout.readline()
            _revoked_meanwhile(lab)
            code = proc.wait(30)
            err = proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 4, (code, err)
    assert err == (
        "crc: error: machine 'dev' is revoked: group expired (TTL); the session is closed\n"
    ), err
    # The session's end says it too (`crc sessions list`, the audit).
    row = lab.client.sessions("lab")[-1]
    assert "machine 'dev' is revoked" in row.get("error", ""), row
