"""How `crc forward` ends and refuses, and what `crc sessions list` says of each end: a
deleted group ends a forward (exit 4); a local address that is not this computer's, or
a local port given twice, is bad input (exit 2) refused before anything listens; a
program name with control characters is a missing program (exit 127), said escaped;
the EXIT column says 127 or "lost" where no exit code came; a forward's probe is left
out of the list unless asked for. The real server, agents and `crc` CLI."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from wire_helpers import assert_no_traceback_in_server_log

from held_service import HeldService

CRC = [sys.executable, "-m", "cloudremotecontrol"]


def _cli_env(env: Any) -> dict[str, str]:
    return {**os.environ, **env.cli_env, "TERM": "xterm", "PYTHONUNBUFFERED": "1"}


def _crc(env: Any, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [*CRC, *args], env=_cli_env(env), capture_output=True, text=True, timeout=90, **kw
    )


@pytest.fixture
def lab(env: Any) -> Any:
    env.group_with_agents("lab", ["dev"])
    return env


@pytest.fixture
def service() -> Any:
    s = HeldService()
    yield s
    s.close()


def _sessions(env: Any, *args: str) -> list[str]:
    r = _crc(env, "sessions", "list", "lab", *args)
    assert r.returncode == 0, r
    return r.stdout.splitlines()[1:]


def test_a_forward_ends_with_exit_4_once_its_group_is_deleted(lab, service):
    with subprocess.Popen(
        [*CRC, "forward", "lab", "dev", f"0:{service.port}"],
        env=_cli_env(lab),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "-> dev:127.0.0.1:" in line, line
            port = int(line.split()[0].rsplit(":", 1)[1])
            lab.client.delete_group("lab")
            with contextlib.suppress(OSError):  # a connection finds the group gone
                with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
                    c.settimeout(30)
                    assert c.recv(10) == b""
            code = proc.wait(60)
            err = proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 4, err
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("crc: error: the forward is closed: no group 'lab'"), err
    assert "Traceback" not in err and err.count("crc: error:") == 1, err


def test_a_forward_with_no_connection_ends_once_its_group_is_deleted(lab, service):
    with subprocess.Popen(
        [*CRC, "forward", "lab", "dev", f"0:{service.port}"],
        env=_cli_env(lab),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert "-> dev:127.0.0.1:" in proc.stdout.readline()
            lab.client.delete_group("lab")
            code = proc.wait(60)  # its periodic check finds the group gone
            err = proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 4, err
    assert err.endswith("crc: error: the forward is closed: no group 'lab': see `crc group list`\n")


def test_forward_listen_failures_are_told_apart_and_refused_before_listening(lab, service):
    # An address that is not this computer's: bad input (2), said as such.
    r = _crc(lab, "forward", "lab", "dev", f"192.0.2.7:0:127.0.0.1:{service.port}")
    assert r.returncode == 2, r
    assert "not an address of this computer" in r.stderr, r.stderr
    assert "another program uses the port" not in r.stderr and r.stdout == "", r
    # One local port twice: refused before anything listens (nothing said forwarded).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    twice = f"{free}:{service.port}"
    r = _crc(lab, "forward", "lab", "dev", twice, twice)
    assert r.returncode == 2, r
    assert "given twice" in r.stderr and r.stdout == "", r
    # A port another program holds is still a conflict (5), said so.
    with socket.create_server(("127.0.0.1", 0)) as busy:
        r = _crc(lab, "forward", "lab", "dev", f"{busy.getsockname()[1]}:{service.port}")
    assert r.returncode == 5 and "another program uses the port" in r.stderr, r
    assert_no_traceback_in_server_log(lab.server)


def test_a_program_name_with_control_characters_is_a_missing_program(lab):
    r = _crc(lab, "shell", "lab", "dev", "--", "/tmp/\x1b[31mred")
    assert r.returncode == 127, r
    assert r.stderr.startswith("crc: error: cannot run '/tmp/\\x1b[31mred': "), r.stderr
    assert "No such file or directory" in r.stderr and "\x1b" not in r.stderr, r.stderr
    assert "unusable control message" not in r.stderr, r.stderr
    deadline = time.monotonic() + 30  # the end is written as the stream closes
    while not any("/tmp/\\x1b[31mred" in line for line in _sessions(lab)):
        assert time.monotonic() < deadline, _sessions(lab)
        time.sleep(0.2)
    (row,) = [line for line in _sessions(lab) if "/tmp/\\x1b[31mred" in line]
    assert row.split()[-2] == "127", row


def test_sessions_list_says_lost_and_leaves_out_forward_probes(lab, service):
    # A forward's start: its probe is audited, but listed only with --probes.
    with subprocess.Popen(
        [*CRC, "forward", "lab", "dev", f"0:{service.port}"],
        env=_cli_env(lab),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as fwd:
        try:
            assert fwd.stdout is not None
            assert "-> dev:127.0.0.1:" in fwd.stdout.readline()
        finally:
            fwd.terminate()
            fwd.wait(30)
    target = f"127.0.0.1:{service.port}"
    deadline = time.monotonic() + 30
    while not any(target in line for line in _sessions(lab, "--probes")):
        assert time.monotonic() < deadline, _sessions(lab, "--probes")
        time.sleep(0.2)
    assert not any(target in line for line in _sessions(lab)), _sessions(lab)
    (probe,) = [line for line in _sessions(lab, "--probes") if target in line]
    assert "forward (probe)" in probe, probe
    # A shell whose machine goes away before its program ends: "lost".
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
            lab.agents[0].stop()  # the machine goes away with the program running
            assert proc.wait(60) != 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdin is not None
            proc.stdin.close()
    deadline = time.monotonic() + 30
    while not any("REMOTE-READY" in line for line in _sessions(lab)):
        assert time.monotonic() < deadline, _sessions(lab)
        time.sleep(0.2)
    (row,) = [line for line in _sessions(lab) if "REMOTE-READY" in line]
    assert row.split()[-2] == "lost", row
    assert_no_traceback_in_server_log(lab.server)


def _ignoring_sigint() -> None:  # a background job of a script starts so
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_forward_started_with_sigint_ignored_keeps_it_ignored(lab, service):
    import signal

    with subprocess.Popen(
        [*CRC, "forward", "lab", "dev", f"0:{service.port}"],
        env=_cli_env(lab),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignoring_sigint,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "-> dev:127.0.0.1:" in line, line
            port = int(line.split()[0].rsplit(":", 1)[1])

            def reaches_the_service() -> bool:
                held = len(service.held)
                with socket.create_connection(("127.0.0.1", port), timeout=30):
                    deadline = time.monotonic() + 60
                    while len(service.held) == held and time.monotonic() < deadline:
                        time.sleep(0.05)
                return len(service.held) > held

            # A connection served: the forward took its signals (before it serves).
            assert reaches_the_service()
            proc.send_signal(signal.SIGINT)
            # Still forwarding: a connection made after the SIGINT reaches the service.
            assert reaches_the_service()
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)  # not ignored: it ends the forward
            code = proc.wait(60)
            err = proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, err
    assert "Traceback" not in err, err
