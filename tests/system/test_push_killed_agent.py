"""kill -9 of an agent in the middle of receiving a pushed file: nothing is ever under
the file's final name but a whole, verified file; the restarted agent reports the push
lost once; pushing again completes the file and leaves no temporary file behind."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tcp_relay import ConnectProxy

from conftest import Env

STALL_AFTER = 2 << 20  # bytes of one connection's answer, then it waits


class StallingProxy(ConnectProxy):
    """Holds the answer of the first connection that carries more than STALL_AFTER
    bytes (a blob download: the agent's WebSocket carries little), until released."""

    def __init__(self) -> None:
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._seen = threading.local()
        self.after = 0  # bytes answered once released
        super().__init__()

    def forward(self, data: bytes, upstream: bool) -> bool:
        if not upstream and self.release.is_set():
            self.after += len(data)
        elif not upstream:
            self._seen.n = getattr(self._seen, "n", 0) + len(data)
            if self._seen.n > STALL_AFTER and not self.stalled.is_set():
                self.stalled.set()
                self.release.wait()
                return False  # the agent is gone by then
        return True


def _wait(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


def test_agent_killed_mid_receive_leaves_no_half_file_and_reports_once(
    env: Env, tmp_path: Path
) -> None:
    proxy = StallingProxy()
    no_proxy = {k: "" for k in ("no_proxy", "NO_PROXY")}
    agent_env = {**no_proxy, "https_proxy": proxy.url}
    try:
        key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
        agent = env.agent("a", key, env=agent_env)
        env.wait_state("lab", ["a"], "ready")
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(16 << 20))
        dest_dir = tmp_path / "dest"
        dest_dir.mkdir()
        dest = dest_dir / "app.bin"
        cli = {**os.environ, **env.cli_env}
        push = [sys.executable, "-m", "cloudremotecontrol", "push", "lab", "--to", "a"]
        first = subprocess.Popen(
            [*push, str(src), str(dest)], env=cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert proxy.stalled.wait(60), agent.log()
            # The first MiB the agent read is written (what follows never comes whole).
            part = _wait(
                "a partial file",
                lambda: [p for p in dest_dir.iterdir() if p.stat().st_size > 0],
            )
            assert not dest.exists() and part[0].name.endswith(".part"), part
            agent.kill()  # SIGKILL mid-receive
            kept = part[0].stat().st_size
            proxy.release.set()
            assert not dest.exists()
            env.agent("a", None, env=agent_env)
            _, err = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode != 0 and b"lost" in err, err
        r = subprocess.run(
            [*push, str(src), str(dest)], env=cli, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        # The partial file was resumed (a Range request), not downloaded again whole.
        assert proxy.after < (16 << 20) - kept + (256 << 10), (proxy.after, kept)
        assert (
            hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
        )
        assert [p.name for p in dest_dir.iterdir()] == ["app.bin"]
    finally:
        proxy.release.set()
        proxy.close()
