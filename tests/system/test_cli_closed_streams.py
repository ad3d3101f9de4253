"""`crc` started with its standard streams closed (`crc ... 2>&-`, `>&-`, `<&-`): each
command ends as it does otherwise, with the same exit code, no hang and no traceback on
whichever stream is still open (the real `crc` as a process, started by a real shell)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudremotecontrol.master.localrun import ServerProcess, crc_argv, free_port

CLOSINGS = {
    "stderr": "2>&-",
    "stdout": ">&-",
    "stdout and stderr": ">&- 2>&-",
    "all three": "<&- >&- 2>&-",
}


def _sh(closing: str, argv: list[str]) -> list[str]:
    """ARGV run by a shell with CLOSING's redirections (``exec "$@" 2>&-``)."""
    return ["sh", "-c", f'exec "$@" {closing}', "sh", *argv]


def _run(
    argv: list[str], env: dict[str, str], closing: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_sh(closing, argv), capture_output=True, text=True, timeout=120, env=env)


def _same_ending(
    closing: str, plain: subprocess.CompletedProcess[str], closed: subprocess.CompletedProcess[str]
) -> None:
    what = f"{closed.args[4:]} {closing}"
    assert closed.returncode == plain.returncode, (what, closed.stdout, closed.stderr)
    if "2>&-" in closing:
        assert closed.stderr == "", what  # nothing left to write to: the shell says nothing
    if ">&-" not in closing:
        assert "Traceback" not in closed.stdout, what
    if "2>&-" not in closing:
        assert "Traceback" not in closed.stderr, what


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("closing", list(CLOSINGS.values()), ids=list(CLOSINGS))
def test_commands_end_with_their_own_exit_code_when_streams_are_closed(
    closing: str, tmp_path: Path, busy_port: int
) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "CRC_CONFIG_DIR": str(tmp_path / "cfg")}
    refused = {**env, "CRC_URL": f"https://127.0.0.1:{free_port()}", "CRC_TOKEN": "x"}
    srv = ServerProcess(tmp_path / "srv", env=env)
    srv.init()
    cases = [
        (["--help"], env, 0),
        (["--version"], env, 0),
        (["no-such-command"], env, 2),  # a usage error
        (["group", "list"], env, 3),  # not logged in
        (["group", "list", "--json"], refused, 6),  # the server cannot be reached
        (["server", "list-users", "--data-dir", str(tmp_path / "empty")], env, 4),
        # The server's listening port is taken: the error, then its exit code (5, in
        # use by another process), where a socket numbered 0 to 2 used to abort the
        # process (libuv's assertion, 134).
        (
            [
                "server",
                "run",
                "--data-dir",
                str(srv.data_dir),
                "--listen",
                f"127.0.0.1:{busy_port}",
            ],
            env,
            5,
        ),
    ]
    for args, case_env, code in cases:
        plain = _run(crc_argv(*args), case_env)
        assert plain.returncode == code, (args, plain.stderr)
        closed = _run(crc_argv(*args), case_env, closing)
        _same_ending(closing, plain, closed)
        if ">&-" not in closing and args[0] != "server":
            assert closed.stdout == plain.stdout, args
        if "2>&-" not in closing and args[0] != "server":
            assert closed.stderr == plain.stderr, args


@pytest.mark.parametrize("closing", list(CLOSINGS.values()), ids=list(CLOSINGS))
def test_a_server_with_closed_streams_serves_and_stops_cleanly(
    closing: str, tmp_path: Path
) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    srv = ServerProcess(tmp_path / "srv", env=env)
    srv.init()
    srv.proc = subprocess.Popen(
        _sh(closing, crc_argv("server", "run", "--data-dir", str(srv.data_dir))),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        srv.wait_healthy(60)
        token = srv.add_user("alice")
        user = {
            **env,
            "CRC_URL": srv.url,
            "CRC_TOKEN": token,
            "CRC_FINGERPRINT": srv.fingerprint,
            "CRC_CONFIG_DIR": str(tmp_path / "cfg"),
        }
        # A command that prints JSON with its own stdout closed, against a live server.
        for args in (["group", "create", "lab", "--machines", "a"], ["group", "list", "--json"]):
            r = _run(crc_argv(*args), user, closing)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
            assert "Traceback" not in r.stdout + r.stderr
        srv.proc.send_signal(signal.SIGTERM)
        out, err = srv.proc.communicate(timeout=60)
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, (out, err)
    assert b"Traceback" not in out + err
