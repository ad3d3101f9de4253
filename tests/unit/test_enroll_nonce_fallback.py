"""A new agent enrolling with a server older than the enrollment nonce: that server
refuses the unknown field (its exact answer below), and the agent enrolls with the key
alone, as agents did before."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent.core import enroll
from cloudremotecontrol.agent.state import AgentState

OLD_REFUSAL = {
    "error": {
        "code": "invalid_input",
        "message": "invalid nonce: Extra inputs are not permitted",
        "details": {"field": "nonce"},
    }
}


class OldServer(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        OldServer.bodies.append(body)
        if set(body) != {"key"}:
            status, answer = 400, OLD_REFUSAL
        else:
            status = 200
            answer = {"credential": "crca_0123456789abcdef_" + "x" * 32, "machine": "a"}
            answer |= {"group": "lab", "streams_off": []}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def old_server() -> Iterator[str]:
    OldServer.bodies = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), OldServer)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_a_new_agent_enrolls_with_an_older_server(old_server: str, tmp_path: Path) -> None:
    state = AgentState(tmp_path / "state")
    key = "crck_0123456789abcdef_" + "k" * 32
    cred = enroll(state, old_server, key, None)
    assert (cred.machine, cred.group) == ("a", "lab")
    assert state.load_credential() == cred
    nonce = state.enroll_nonce()
    assert [sorted(b) for b in OldServer.bodies] == [["key", "nonce"], ["key"]]
    assert OldServer.bodies[0]["nonce"] == nonce
    state.db.close()
