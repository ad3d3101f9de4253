"""An agent enrolling at a URL where something else than a CloudRemoteControl server
answers (another web server, a proxy's or a captive portal's page, JSON of another
API) stops with one clear line and exit 6, whatever the status of that answer, and
names the URL as it was given (a path included)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

KEY = "crck_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

ANSWERS: dict[str, tuple[int, str, bytes]] = {
    "html-200": (200, "text/html", b"<html><body>Sign in to the Wi-Fi</body></html>"),
    "json-list-200": (200, "application/json", b"[1, 2]"),
    "json-other-200": (200, "application/json", b'{"status": "ok"}'),
    "invalid-utf8-200": (200, "application/json", b"\xff\xfe{"),
    "html-404": (404, "text/html", b"<html>Not Found</html>"),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    answer: tuple[int, str, bytes] = (404, "text/plain", b"")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, ctype, body = self.answer
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=sorted(ANSWERS))
def other_server(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"answer": ANSWERS[request.param]})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_enrolling_where_another_server_answers_is_one_clear_error(other_server, tmp_path):
    url = other_server  # (a URL with a path is refused before it is asked: unit tests)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    state = ["--state-dir", str(tmp_path / "st"), "--hosts-file", str(tmp_path / "hosts")]
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol.agent", "run", "--url", url, *state],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "CRC_KEY": KEY},
    )
    assert r.returncode == 6, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert f"crc agent: error: {url} is not a CloudRemoteControl server" in r.stderr, r.stderr
    assert KEY not in r.stderr
    assert not (tmp_path / "st" / "credential.json").exists()
