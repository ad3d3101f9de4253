"""A stand-in for an agent that is stopped now and starts a moment later, on a real Unix
control socket: what the `crc agent` helpers' `--agent-wait` tests run beside."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: What the stand-in answers a request other than ``status`` with.
Answer = Callable[[dict[str, Any]], dict[str, Any]]


def crc_agent(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`crc agent ARGV` as a process, with none of the agent variables of the tests'
    own environment (``env`` sets those it needs)."""
    base = {
        k: v for k, v in os.environ.items() if k not in ("CRC_AGENT_WAIT", "CRC_AGENT_STATE_DIR")
    }
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "agent", *argv],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def stopped_agent_dir(tmp_path: Path) -> Path:
    """A state directory where an agent ran and stopped: it may come back."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "agent.lock").touch()
    return state


class LateAgent:
    """An agent that starts ``after`` seconds from now: answers a status as a connected
    agent does, and any other request with ``answer(request)``; a ``wait-message``
    reply is confirmed by the helper's ``ack`` line, as the agent expects."""

    def __init__(self, state: Path, after: float, answer: Answer) -> None:
        self.state, self.answer = state, answer
        self.requests: list[dict[str, Any]] = []
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
                reader = conn.makefile("rb")
                request = json.loads(reader.readline())
                self.requests.append(request)
                if request["op"] == "status":
                    reply = {"ok": True, "machine": "a", "group": "lab", "connected": True}
                else:
                    reply = self.answer(request)
                conn.sendall(json.dumps(reply).encode() + b"\n")
                if request["op"] == "wait-message":
                    assert reader.readline() == b"ack\n"

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
