"""How `crc shell` and `crc forward` end: input that is not a terminal (a pipe, an empty
one, /dev/null) ends the remote login shell once it has read it all; SIGTERM and SIGHUP
restore the operator's terminal; a revoked master token ends a forward (exit 3); exit
codes as the exit-code table has them; a name the machine cannot resolve said as such.
The real server, agents and `crc` CLI, the terminal a real pty."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from wire_helpers import assert_no_traceback_in_server_log

from held_service import HeldService

CRC = [sys.executable, "-m", "cloudremotecontrol"]
SHELL = [*CRC, "shell", "lab", "dev", "--"]


def _cli_env(env: Any, **extra: str) -> dict[str, str]:
    return {**os.environ, **env.cli_env, "TERM": "xterm", "PYTHONUNBUFFERED": "1", **extra}


def _crc(env: Any, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    extra = kw.pop("extra", {})
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        env=_cli_env(env, **extra),
        capture_output=True,
        text=True,
        **kw,
    )


@pytest.fixture
def lab(env: Any) -> Any:
    env.group_with_agents("lab", ["dev"])
    return env


# -- 1. input that is not a terminal ---------------------------------------------------------


PIPED = {
    "true |": ({"input": ""}, 0, None),
    "</dev/null": ({"stdin": subprocess.DEVNULL}, 0, None),
    "echo hi |": ({"input": "echo hi\n"}, 0, "hi"),
    "exit 3 |": ({"input": "echo one; false\necho two-$((1+1))\nexit 3\n"}, 3, "two-2"),
    "no newline |": ({"input": "echo last"}, 0, "last"),
}


@pytest.mark.parametrize("case", list(PIPED))
def test_piped_or_empty_input_ends_the_login_shell_once_read(lab, case):
    """Fast input (no pause before its end) into the machine's login shell (bash, with
    its line editor): the shell reads it all, then the end of it, and exits with its
    own code. It used to hang for ever: the Ctrl-D that stood for the end arrived
    before bash's line editor took the terminal, which turned it into a NUL byte."""
    kw, code, out = PIPED[case]
    started = time.monotonic()
    r = _crc(lab, "shell", "lab", "dev", timeout=30, **kw)
    took = time.monotonic() - started
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert took < 15, took
    assert "Traceback" not in r.stderr, r.stderr
    if out is not None:
        assert out in r.stdout, r.stdout
    # What a program reads is the input as it came, then its end (cat ends).
    r = _crc(lab, "shell", "lab", "dev", "--", "cat", input="a\nb", timeout=30)
    assert r.returncode == 0 and r.stdout.replace("\r\n", "\n") == "a\nb", r
    assert_no_traceback_in_server_log(lab.server)


# -- 2. SIGTERM and SIGHUP under a terminal ---------------------------------------------------


def _shell_under_pty(env: Any) -> tuple[subprocess.Popen[bytes], int, int, list[bytes]]:
    """`crc shell` with a real pty as its terminal; its output is read by a thread."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [*SHELL, "sh", "-c", "echo REMOTE-READY; sleep 600"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_cli_env(env),
        start_new_session=True,
    )
    seen: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                seen.append(chunk)

    threading.Thread(target=read, daemon=True).start()
    return proc, master, slave, seen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_restore_the_terminal_and_exit_128_plus_the_signal(lab, signum):
    proc, master, slave, seen = _shell_under_pty(lab)
    try:
        deadline = time.monotonic() + 60
        while b"REMOTE-READY" not in b"".join(seen):
            assert proc.poll() is None and time.monotonic() < deadline, b"".join(seen)
            time.sleep(0.05)
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & (termios.ICANON | termios.ECHO)  # raw for the session
        proc.send_signal(signum)
        code = proc.wait(30)
        lflag = termios.tcgetattr(slave)[3]
        assert lflag & termios.ICANON and lflag & termios.ECHO, "the terminal was left raw"
        assert code == 128 + signum, (code, b"".join(seen))
        time.sleep(0.2)
        said = b"".join(seen).decode(errors="replace")
        name = signal.Signals(signum).name
        assert f"crc: {name}: the session on dev is closed" in said, said
        assert "Traceback" not in said, said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(slave)
        os.close(master)


# -- 3 and 4. a revoked token; exit codes ------------------------------------------------------


def _forward_line(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert "-> dev:127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
    return int(line.split()[0].rsplit(":", 1)[1].strip("/"))


def test_a_forward_ends_with_exit_3_once_its_token_is_revoked(lab):
    """The connection open at the revocation is closed by the server, the next one is
    refused: crc forward says why once and exits 3, no Python repr of an exception."""
    token = lab.server.admin("add-token", "alice", "laptop")["token"]
    service = HeldService()
    with subprocess.Popen(
        [*CRC, "forward", "lab", "dev", f"0:{service.port}"],
        env=_cli_env(lab, CRC_TOKEN=token),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            port = _forward_line(proc)
            held = socket.create_connection(("127.0.0.1", port), timeout=30)
            time.sleep(1)
            lab.server.admin("revoke-token", "alice", "laptop")
            time.sleep(1)
            with contextlib.suppress(OSError):  # the next connection finds it revoked
                socket.create_connection(("127.0.0.1", port), timeout=30).close()
            assert proc.wait(30) == 3
            err = proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            service.close()
    held.close()
    assert "revoked" in err and err.rstrip().endswith("the forward is closed"), err
    assert "ConnectionClosed" not in err and "Close(code" not in err, err
    assert "Traceback" not in err, err


def test_crc_shell_to_a_stopped_machine_is_unavailable_exit_6(env):
    """Not connected: unavailable (6), as crc forward says of it; not a conflict (5)."""
    out = env.client.create_group("lab", ["dev", "b"])
    agents = {m["name"]: env.agent(m["name"], m["key"]) for m in out["machines"]}
    env.wait_state("lab", ["dev", "b"], "ready")
    agents["b"].stop()  # b: stopped
    env.wait_state("lab", ["b"], "offline", timeout=90)
    r = _crc(env, "shell", "lab", "b", "--", "true", timeout=60)
    assert r.returncode == 6 and "not connected" in r.stderr, r
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r


def test_crc_shell_of_a_program_that_cannot_run_exits_127_or_126(lab, tmp_path):
    """A program that does not exist: 127; one that cannot be run: 126 (as shells do)."""
    env = lab
    plain = tmp_path / "not-executable"
    plain.write_text("echo hi\n")
    plain.chmod(0o644)
    for args, code in (
        (["--", "/nonexistent/prog"], 127),
        (["--shell", "/nonexistent/sh"], 127),
        (["--", str(plain)], 126),
    ):
        r = _crc(env, "shell", "lab", "dev", *args, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert r.stderr.startswith("crc: error: cannot run "), r.stderr


def _shell_ended_by(env: Any, cut: Any, **extra: str) -> tuple[int, str]:
    """`crc shell` running a program that waits: once it runs, ``cut()``; crc's exit
    code and stderr (the program's stdin kept open: only the cut ends the session)."""
    with subprocess.Popen(
        [*SHELL, "sh", "-c", "echo REMOTE-READY; sleep 600"],
        env=_cli_env(env, **extra),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert "REMOTE-READY" in proc.stdout.readline()
            cut()
            code = proc.wait(60)
            return code, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_crc_shell_whose_token_is_revoked_exits_3(lab):
    """The master token revoked during the session: unauthorized (3), said."""
    env = lab
    token = env.server.admin("add-token", "alice", "laptop")["token"]
    code, err = _shell_ended_by(
        env, lambda: env.server.admin("revoke-token", "alice", "laptop"), CRC_TOKEN=token
    )
    assert code == 3 and "revoked" in err and "Traceback" not in err, (code, err)


def test_crc_shell_whose_agent_dies_says_so_exit_6(env):
    """The machine's agent killed mid-session: the server tells the master why the
    session ended (unavailable, 6), and its audit says it too, not a bare close."""
    out = env.client.create_group("lab", ["dev"])
    (m,) = out["machines"]
    agent = env.agent(m["name"], m["key"])
    env.wait_state("lab", ["dev"], "ready")
    code, err = _shell_ended_by(env, agent.kill)  # SIGKILL
    assert code == 6, (code, err)
    said = (
        "machine dev closed the session before its program ended (its agent stopped or "
        "lost its connection to the server)"
    )
    assert err == f"crc: error: {said}\n", err
    (session,) = env.client.sessions("lab")
    assert session.get("error") == said, session


# -- 5. a name the machine cannot resolve ------------------------------------------------------


def _resolving_nothing(tmp: Path) -> list[str]:
    """A prefix giving an agent a private view of /etc/nsswitch.conf (host names from
    its hosts file only) and /etc/resolv.conf (loopback only): no name lookup of the
    test leaves this computer. The files themselves are not touched."""
    nss = tmp / "nsswitch.conf"
    nss.write_text("hosts: files\n")
    resolv = tmp / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
    script = (
        'mount --bind "$0" /etc/nsswitch.conf && mount --bind "$1" /etc/resolv.conf '
        '&& shift && exec "$@"'
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        str(nss),
        str(resolv),
    ]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to keep the lookup on this computer",
)
def test_a_remote_name_that_does_not_resolve_is_said_so(env, tmp_path):
    prefix = _resolving_nothing(tmp_path)
    # The prefix holds: within it, the name fails at once, and locally.
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import socket; socket.getaddrinfo('nosuch.invalid', 80)"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 1 and "gaierror" in probe.stderr, probe
    out = env.client.create_group("lab", ["dev"])
    env.agent("dev", out["machines"][0]["key"], prefix=prefix)
    env.wait_state("lab", ["dev"], "ready")
    r = _crc(env, "forward", "lab", "dev", "0:nosuch.invalid:80", timeout=60)
    assert r.returncode == 6, r
    assert r.stderr.startswith(
        "crc: error: machine dev cannot connect to nosuch.invalid:80: cannot resolve nosuch.invalid"
    ), r.stderr
    assert "Unknown error" not in r.stderr and "is a service listening" not in r.stderr, r
    assert r.stderr.count("\n") == 1, r.stderr
