"""Signals at each phase of the commands that start a job, with a real server and real
crc processes: before the job exists (a push hashing and uploading its file) a Ctrl-C,
SIGTERM or SIGHUP stops crc at once and starts no job; a signal crc was started with
ignored (``nohup``) stays ignored; a token revoked while crc follows its job is said by
the refusal alone; a pull's download stopped by a signal leaves no partial file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tcp_relay import TcpRelay

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


class StallingRelay(TcpRelay):
    """Relays to the server, and holds what the client sends once ``after`` bytes went
    up (an upload under way; ``up`` False: what it gets, a download) until ``release``
    is set: the transfer stalls there."""

    def __init__(self, upstream_port: int, after: int, up: bool = True) -> None:
        self.upstream_port, self.after, self.up = upstream_port, after, up
        self.sent = 0
        self.stalled = threading.Event()
        self.release = threading.Event()
        super().__init__()

    def connect(self, client: socket.socket) -> socket.socket | None:
        return socket.create_connection(("127.0.0.1", self.upstream_port), 5)

    def forward(self, data: bytes, upstream: bool) -> bool:
        if upstream == self.up:
            self.sent += len(data)
            if self.sent > self.after:
                self.stalled.set()
                self.release.wait(120)
        return True


def _crc(env: Any, *args: str, url: str | None = None, ignored: tuple[int, ...] = ()) -> Any:
    def ignore() -> None:  # as nohup (SIGHUP), or a shell's background job (SIGINT)
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)

    extra = {"CRC_URL": url} if url else {}
    return subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env.cli_env, **extra},
        preexec_fn=ignore,
    )


def _ended(proc: Any, timeout: float = 60) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return str(out), str(err)


def _wait_for(what: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_a_signal_during_a_push_upload_stops_it_at_once_and_starts_no_job(
    env: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    env.client.create_group("g", ["a"])  # never enrolled: a job would wait for it
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(48 << 20)
    relay = StallingRelay(env.server.port, after=8 << 20)
    try:
        proc = _crc(env, "push", "g", "--to", "a", str(big), "/tmp/big.bin", url=relay_url(relay))
        try:
            assert relay.stalled.wait(60), "the upload never got under way"
            proc.send_signal(sig)
            out, err = _ended(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        relay.release.set()
        relay.close()
    name = "Ctrl-C" if sig == signal.SIGINT else sig.name
    assert (proc.returncode, out) == (128 + sig, ""), err
    assert err == f"crc: {name}: stopped before the job was created (nothing to cancel)\n"
    assert env.client.list_jobs("g") == []
    # The server's part of the upload goes as for a cut connection: nothing kept.
    blobs = env.server.data_dir / "blobs"
    _wait_for(lambda: not any((blobs / "tmp").iterdir()))
    assert [p for p in blobs.rglob("*") if p.is_file()] == []


def relay_url(relay: TcpRelay) -> str:
    return f"https://127.0.0.1:{relay.port}"


def test_crc_run_under_nohup_leaves_its_job_running_on_a_hang_up(env: Any) -> None:
    """`nohup crc run ... &` then a hang-up (the terminal closed): the job runs to its
    end, exit 0. (SIGINT ignored, as a script's background job has it: test_cli_signal_
    ignored.py, with the signal landing while the job is being started.)"""
    sig = signal.SIGHUP
    env.group_with_agents("g", ["a"])
    proc = _crc(
        env,
        "run",
        "g",
        "--to",
        "a",
        "--shell",
        "sh",
        "--",
        "echo started; sleep 2; echo done",
        ignored=(sig,),
    )
    try:
        proc.send_signal(sig)  # at once: while crc starts, or creates the job
        assert proc.stdout is not None
        assert proc.stdout.readline() == "[a] started\n"
        proc.send_signal(sig)  # while it runs
        out, err = _ended(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out) == (0, "[a] done\n"), err
    assert "cancel" not in err, err


def test_a_token_revoked_while_crc_push_waits_is_said_alone(env: Any, tmp_path: Path) -> None:
    """The server ends the revoked token's stream, and refuses it when it is opened
    again: only the refusal is said, not a stream that broke and is being resumed."""
    env.client.create_group("g", ["a"])  # never enrolled: the push waits for it
    token = env.server.admin("add-token", "alice", "laptop")["token"]
    small = tmp_path / "small.txt"
    small.write_text("x\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "push", "g", "--to", "a", str(small), "/x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env.cli_env, "CRC_TOKEN": token},
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # job JOB_ID on a; then: a not connected
        assert first.startswith("job "), first
        _wait_for(lambda: bool(env.client.list_jobs("g")))
        env.server.admin("revoke-token", "alice", "laptop")
        _, err = _ended(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    assert "event stream" not in err, err
    assert "unknown or revoked master token" in err, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_a_pulls_download_removes_its_partial_file(
    env: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM and SIGHUP end the download as Ctrl-C does: its partial file removed,
    not left behind by crc killed."""
    env.group_with_agents("g", ["a"])
    remote = tmp_path / "remote.bin"
    with open(remote, "wb") as fh:
        fh.truncate(48 << 20)
    here = tmp_path / "here"
    here.mkdir()
    relay = StallingRelay(env.server.port, after=8 << 20, up=False)
    try:
        proc = _crc(
            env,
            "pull",
            "g",
            "--from",
            "a",
            str(remote),
            str(here / "got.bin"),
            url=relay_url(relay),
        )
        try:
            assert relay.stalled.wait(60), "the download never got under way"
            assert [p.name[:10] for p in here.iterdir()] == [".crc-pull-"]
            proc.send_signal(sig)
            out, err = _ended(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        relay.release.set()
        relay.close()
    assert (proc.returncode, out) == (128 + sig, ""), err
    assert err.endswith("[a] succeeded (exit 0)\ncrc: interrupted\n"), err
    assert list(here.iterdir()) == []
