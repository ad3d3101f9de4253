"""`crc login` with several URLs checks each one is the same server, not only the first."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudremotecontrol.master.localrun import ServerProcess, free_port


@pytest.fixture
def first(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "first").start()
    yield srv
    srv.stop()


def _login(home: Path, urls: str, token: str, fingerprint: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    home.mkdir(exist_ok=True)
    argv = ["login", "--url", urls, "--token", token, "--fingerprint", fingerprint, "--json"]
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
    )


def _saved(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


def test_a_url_of_a_server_with_another_certificate_is_refused(first, tmp_path):
    other = ServerProcess(tmp_path / "other").start()
    try:
        assert other.fingerprint != first.fingerprint
        token = first.add_user("alice")
        home = tmp_path / "home"
        r = _login(home, f"{first.url},{other.url}", token, first.fingerprint)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(
            f"crc: error: --url lists {other.url}, which is not the same server as {first.url}: "
        ), r.stderr
        assert other.fingerprint in r.stderr and "Traceback" not in r.stderr
        assert r.stdout == "" and _saved(home) == []
    finally:
        other.stop()


def test_a_url_of_a_server_that_does_not_know_the_token_is_refused(first, tmp_path):
    """Same certificate (copied), but a database of its own: another server."""
    token = first.add_user("alice")
    stranger = first.replica(tmp_path / "stranger").start()
    try:
        home = tmp_path / "home"
        r = _login(home, f"{first.url},{stranger.url}", token, first.fingerprint)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(
            f"crc: error: --url lists {stranger.url}, which is not the same server as "
            f"{first.url}: it rejected the token {first.url} accepted ("
        ), r.stderr
        assert _saved(home) == []
    finally:
        stranger.stop()


def test_a_url_that_cannot_be_reached_is_a_warning_and_kept(first, tmp_path):
    token = first.add_user("alice")
    dead = f"https://127.0.0.1:{free_port()}"
    home = tmp_path / "home"
    for urls in (f"{first.url},{dead}", f"{dead},{first.url}"):
        r = _login(home, urls, token, first.fingerprint)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["url"] == urls
        assert r.stderr == (
            f"crc: warning: not checked, cannot reach {dead}: [Errno 111] Connection refused; "
            f"kept in the profile all the same (a replica may be down): logged in through "
            f"{first.url}\n"
        )


@pytest.mark.parametrize(
    ("content_type", "body", "said"),
    [
        ("text/html", b"<html>Not Found</html>", "is not a CloudRemoteControl server: "),
        ("application/json", b"{}", "the server's answer has no 'user': "),
    ],
    ids=["a-web-page", "json-without-the-answer"],
)
def test_a_url_of_something_else_than_the_api_is_refused(first, tmp_path, content_type, body, said):
    """A web server at the second URL (with the first's certificate, as behind one
    front): its page, or JSON that is not the API's answer, is not the same server. The
    second was taken for a replica down and kept: checked by its wording, which only the
    page matched."""
    token = first.add_user("alice")

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404 if content_type == "text/html" else 200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(first.data_dir / "cert.pem", first.data_dir / "key.pem")
    web.socket = ctx.wrap_socket(web.socket, server_side=True)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        other = f"https://127.0.0.1:{web.server_address[1]}"
        home = tmp_path / "home"
        r = _login(home, f"{first.url},{other}", token, first.fingerprint)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(
            f"crc: error: --url lists {other}, which is not the same server as {first.url}: "
        ), r.stderr
        assert said in r.stderr and "Traceback" not in r.stderr
        assert r.stdout == "" and _saved(home) == []
    finally:
        web.shutdown()
        web.server_close()
