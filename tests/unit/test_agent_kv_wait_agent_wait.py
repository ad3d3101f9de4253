"""`crc agent kv wait` takes `--agent-wait` (env `CRC_AGENT_WAIT`) as every other
`crc agent` helper does: an agent not answering when it starts (stopped, restarting) is
waited for that long (within --timeout), said on stderr, then exit 6; one that comes back
within it is asked. Each command runs as a process, beside a stand-in agent on a real
Unix socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a Unix control socket")


def _crc(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if k not in ("CRC_AGENT_WAIT", "CRC_AGENT_STATE_DIR")
    }
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "agent", "kv", "wait", *argv],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stopped_agent_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    (state / "agent.lock").touch()  # an agent ran here (and stopped): it may come back
    return state


class LateAgent:
    """An agent that starts ``after`` seconds from now: answers a status, and a kv-wait
    with the key's value."""

    def __init__(self, state: Path, after: float) -> None:
        self.state = state
        self.requests: list[dict[str, object]] = []
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, args=(after,), daemon=True)
        self.thread.start()

    def _serve(self, after: float) -> None:
        time.sleep(after)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(self.state / "control.sock"))
        self.sock.listen(8)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = json.loads(conn.makefile("rb").readline())
                self.requests.append(request)
                if request["op"] == "status":
                    reply = {"ok": True, "machine": "a", "group": "lab", "connected": True}
                else:
                    reply = {"ok": True, "key": request["key"], "value": "yes", "version": 1}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def test_kv_wait_waits_agent_wait_for_an_agent_then_fails_clearly(tmp_path: Path) -> None:
    state = _stopped_agent_dir(tmp_path)
    argv = ("db/up", "--timeout", "30", "--state-dir", str(state))
    started = time.monotonic()
    r = _crc(*argv, "--agent-wait", "0.5", cwd=tmp_path)
    assert time.monotonic() - started < 20  # --agent-wait, not --timeout
    assert r.returncode == 6, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("crc: waiting up to 0.5 s for the agent"), r.stderr
    assert lines[1].startswith("crc: error: no agent answered with state dir"), r.stderr
    assert "within 0.5 s" in lines[1] and "--agent-wait" in lines[1] and len(lines) == 2
    # The same from the environment, and 0: at once, without a word of waiting.
    r = _crc(*argv, cwd=tmp_path, CRC_AGENT_WAIT="0.5")
    assert r.returncode == 6 and "waiting up to 0.5 s" in r.stderr, r.stderr
    r = _crc(*argv, "--agent-wait", "0", cwd=tmp_path)
    assert r.returncode == 6 and "waiting" not in r.stderr, r.stderr


def test_kv_wait_agent_wait_is_within_its_timeout(tmp_path: Path) -> None:
    state = _stopped_agent_dir(tmp_path)
    started = time.monotonic()
    r = _crc("k", "--timeout", "1", "--agent-wait", "60", "--state-dir", str(state), cwd=tmp_path)
    assert time.monotonic() - started < 20, r.stderr
    assert r.returncode == 6, r.stderr
    assert "waiting up to 1 s for the agent" in r.stderr and "within 1 s" in r.stderr


@pytest.mark.parametrize("how", ["option", "env"])
def test_kv_wait_asks_an_agent_that_comes_back_within_agent_wait(how: str, tmp_path: Path) -> None:
    state = _stopped_agent_dir(tmp_path)
    agent = LateAgent(state, after=1.0)
    try:
        argv = ["db/up", "--timeout", "30", "--state-dir", str(state)]
        env = {"CRC_AGENT_WAIT": "20"} if how == "env" else {}
        if how == "option":
            argv += ["--agent-wait", "20"]
        r = _crc(*argv, cwd=tmp_path, **env)
    finally:
        agent.close()
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == "yes"
    assert "waiting up to 20 s for the agent" in r.stderr
    assert [q["op"] for q in agent.requests] == ["status", "kv-wait"]
    assert agent.requests[1]["key"] == "db/up"


def test_kv_wait_agent_wait_is_bounded_as_for_every_helper(tmp_path: Path) -> None:
    for bad in ("nan", "inf", "3601"):
        r = _crc("k", "--agent-wait", bad, cwd=tmp_path)
        assert r.returncode == 2 and "Invalid value for '--agent-wait'" in r.stderr, r.stderr
