"""An agent's upload for a pull (``agent/files.upload_file``) against a real HTTP server
on loopback: one cut or refused while the server still holds a cut one is sent again,
to the server the agent is connected to at that moment; a refusal that is final is not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent import files
from cloudremotecontrol.errors import Conflict, Unavailable


class Server:
    """Answers each upload with the next of ``answers`` (status, error code), then 200."""

    def __init__(self, answers: list[tuple[int, str]]) -> None:
        self.answers = answers
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.append(body)
                status, code = outer.answers.pop(0) if outer.answers else (200, "")
                doc: dict[str, Any] = (
                    {"error": {"code": code, "message": code}} if code else {"ok": True}
                )
                raw = json.dumps(doc).encode()
                kind = "application/json"
                if status >= 400 and not code:  # a web server's page
                    raw, kind = b"<html>Not Found</html>", "text/html"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(b"x" * 5000)
    return path


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server([])
    yield s
    s.close()


def test_an_upload_refused_while_a_cut_one_is_held_is_sent_again(server, payload) -> None:
    server.answers = [(409, "upload_in_progress"), (409, "upload_in_progress")]
    naps: list[float] = []
    files.upload_file(lambda: (server.url, None), "cred", "job1", str(payload), naps.append)
    assert server.bodies == [payload.read_bytes()] * 3
    assert naps == [0.5, 1.0]


def test_a_large_file_is_read_again_from_its_start_for_each_attempt(server, tmp_path) -> None:
    """Over ``SMALL`` a file is streamed (not kept in memory): each attempt reads it
    again from the start, and sends exactly the bytes that were hashed."""
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * ((files.SMALL + 12345) // 256))
    server.answers = [(409, "upload_in_progress")]
    files.upload_file(lambda: (server.url, None), "cred", "job1", str(big), lambda s: None)
    assert server.bodies == [big.read_bytes()] * 2


def test_an_upload_cut_goes_to_the_server_the_agent_moved_to(server, payload) -> None:
    dead = "http://127.0.0.1:9"  # nothing listens: connection refused
    where = iter([dead, dead, server.url])
    files.upload_file(lambda: (next(where), None), "cred", "job1", str(payload), lambda s: None)
    assert server.bodies == [payload.read_bytes()]


def test_a_final_refusal_is_not_sent_again(server, payload) -> None:
    server.answers = [(409, "already_uploaded")]
    with pytest.raises(Conflict):
        files.upload_file(lambda: (server.url, None), "cred", "job1", str(payload), lambda s: None)
    assert len(server.bodies) == 1


def test_an_answer_that_is_not_a_crc_servers_is_not_sent_again(server, payload) -> None:
    server.answers = [(404, "")]  # no API error body: a web server, not crc
    with pytest.raises(Unavailable, match="not a CloudRemoteControl server"):
        files.upload_file(lambda: (server.url, None), "cred", "job1", str(payload), lambda s: None)
    assert len(server.bodies) == 1
